package workers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// Verdict is what one attempt's outcome means.
type Verdict int

// The verdicts of Classify.
const (
	Success  Verdict = iota // 2xx: done
	Retry                   // configured status, network error or timeout
	Terminal                // any other status: done, failed, response kept
)

// Classify decides an attempt's verdict from its status (0 when err is set).
func Classify(status int, err error, onStatus []int) Verdict {
	switch {
	case errors.Is(err, errBuild):
		return Terminal
	case err != nil:
		return Retry
	case status >= 200 && status < 300:
		return Success
	case slices.Contains(onStatus, status):
		return Retry
	default:
		return Terminal
	}
}

// errBuild marks a request sluice cannot send at all (ingress refuses what
// would cause it; a message from an older version may still carry it). It
// is terminal at once and says nothing about the backend's health.
var errBuild = errors.New("invalid request")

// The error categories clients see in last_error and attempt logs: job's,
// the one list the stores encode them by.
const (
	ErrTimeout   = job.ErrTimeout
	ErrRefused   = job.ErrRefused
	ErrDNS       = job.ErrDNS
	ErrTLS       = job.ErrTLS
	ErrReset     = job.ErrReset
	ErrClosed    = job.ErrClosed
	ErrNetwork   = job.ErrNetwork
	ErrRequest   = job.ErrRequest
	ErrUnreached = job.ErrUnreached
)

// describe turns a transport error into its category.
func describe(err error) string {
	var dnsErr *net.DNSError
	var tlsRec tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var netErr net.Error
	switch {
	case errors.Is(err, errBuild):
		return ErrRequest
	case errors.As(err, &dnsErr):
		return ErrDNS
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, http.ErrHandlerTimeout),
		errors.As(err, &netErr) && netErr.Timeout():
		return ErrTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ErrUnreached
	case errors.As(err, &tlsRec), errors.As(err, &certErr), errors.As(err, &unknownAuth),
		errors.As(err, &hostname), errors.As(err, &invalid), strings.Contains(err.Error(), "tls: "),
		strings.Contains(err.Error(), "HTTP response to HTTPS client"):
		return ErrTLS
	case errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrClosed
	default:
		return ErrNetwork
	}
}

// logEntry is attempt n's entry in req's attempt log: the backend's
// status, or, with no answer, status 0 and the error's category.
func logEntry(req *job.Request, n int, res result) job.Attempt {
	a := job.Attempt{Gen: req.Gen, Attempt: n, At: res.at.UTC(), Status: res.status, DurationMS: res.took.Milliseconds()}
	if res.err != nil {
		a.Status, a.Error = 0, describe(res.err)
	}
	return a
}

// retryAfter reads a Retry-After header, seconds or an HTTP date, capped at
// limit: a backend cannot park a request for longer than max_backoff.
func retryAfter(h http.Header, now time.Time, limit time.Duration) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.ParseUint(v, 10, 64); err == nil {
		if s > uint64(limit/time.Second)+1 {
			return limit
		}
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil && t.After(now) {
		d = t.Sub(now)
	}
	return min(d, limit)
}
