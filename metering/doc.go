// Package metering counts, per client and route, what the ingress
// accepted (requests and bytes) and refused (by status): SPEC §6's
// GET /admin/clients, in memory, per process.
package metering
