package admin

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/problem"
)

// Records reads requests' records from the result store (results.Store):
// Get answers job.ErrNotFound for an unknown or expired id. Safe for
// concurrent use.
type Records interface {
	Get(ctx context.Context, id string) (*job.Record, error)
}

// request answers GET /admin/requests/<id>: the request's record in the
// very JSON a poll answers (job.Record's form, attempt_log included),
// whichever client sent it — the operator's view of one request.
func (h *Handler) request(rw http.ResponseWriter, r *http.Request) {
	if h.Records == nil {
		problem.Write(rw, 503, "this process has no result store")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rec, err := h.Records.Get(ctx, r.PathValue("id"))
	switch {
	case errors.Is(err, job.ErrNotFound):
		problem.Write(rw, 404, "no request with this id (unknown or expired)")
	case err != nil:
		rw.Header().Set("Retry-After", "1")
		problem.Write(rw, 503, "the result store is unavailable; try later")
	default:
		writeJSON(rw, 200, rec)
	}
}
