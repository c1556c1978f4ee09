// Package tracingtest is an OTLP/HTTP trace receiver for tests: an
// httptest server in the test process that takes POST /v1/traces
// (protobuf ExportTraceServiceRequest, gzip or not) and keeps the spans
// for the test to look at.
package tracingtest
