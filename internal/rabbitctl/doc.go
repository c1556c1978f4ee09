// Package rabbitctl stops, kills and restarts the local RabbitMQ server
// (rabbitmqctl, rabbitmq-server), for fault tests that need the real broker
// to go away and come back in the middle of a stream, and runs the
// rabbitmqctl commands tests inspect or tune the server with. It is test
// tooling: nothing sluice runs in production imports it.
package rabbitctl
