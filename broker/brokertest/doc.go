// Package brokertest is the conformance suite every broker kind passes:
// publish, consume, ack, nack and redelivery, held-back messages that do not
// block the ones behind them, redelivery after a consumer dies, close while
// busy, a graceful stop (settle, then close), stats, dead letters listed
// without being consumed and taken by position, and messages over the size
// limit. A kind's test calls Run with a factory.
package brokertest
