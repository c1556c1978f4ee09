// Package metering counts, per client and route, what the ingress
// accepted (requests and bytes) and refused (by status): SPEC §6's
// GET /admin/clients and the sluice_requests_total series of /metrics, in
// memory, per process. Counting an accepted answer is two atomic adds; a
// refused one takes a short lock.
package metering
