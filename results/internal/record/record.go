package record

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// legacy is a record as both stores kept it before the compact form:
// JSON, led by its merge key (records older still lack the key). Decode
// still reads it; nothing writes it any more.
type legacy struct {
	Merge *[3]int `json:"merge,omitempty"`
	*job.Record
	Client string `json:"client,omitempty"`
	Gen    int    `json:"gen,omitempty"`
}

// Version is the first byte of a record in the compact form. A legacy
// record is JSON and starts with '{'.
const Version = 0x01

// The status codes of the compact form: byte 1 of a record. The Redis
// merge script reads it as the status rank, codeFailed being rank 3 too.
const (
	codeQueued byte = iota
	codeInFlight
	codeRetrying
	codeSucceeded
	codeFailed
	codeOther // the status follows as a string
)

var statusCodes = []job.Status{job.Queued, job.InFlight, job.Retrying, job.Succeeded, job.Failed}

// Record flags.
const (
	fDeadLettered = 1 << iota
	fCompleted    // CompletedAt is set
	fCompletedIsUpdated
	fWideTimes // times as (seconds, nanoseconds), not nanoseconds since 1970
	fOffsets   // each time is followed by its zone offset
	fResponse
	fLastError
	fClient
	fAttemptLog // the attempt log follows the response
)

// Response flags.
const (
	rTruncated = 1 << iota
	rNilHeaders
	rUTF8
	rBase64
	rOtherEncoding // the encoding follows as a string
)

// Encode writes r in the compact form, which is what both stores keep:
//
//	version byte, status code byte, gen, attempts, flags (uvarints),
//	route, backend, [client], [status], [last error] (length-prefixed),
//	accepted_at as nanoseconds since 1970 (zigzag varint),
//	updated_at and [completed_at] as nanoseconds after accepted_at,
//	[zone offsets], [response: status, flags, headers, body],
//	[attempt log: count, then per attempt its generation and number
//	(varints), its time as nanoseconds after accepted_at [and its zone
//	offset], its status (varint), its error (errorCode: a byte for a
//	known category) and its duration in milliseconds (varint)].
//
// With fWideTimes, every time (the attempts' too) is seconds and
// nanoseconds since 1970 instead. The id is not in it: both stores key
// the record by its id already, and Decode takes it back from the
// caller. A record of a succeeded request without a response takes about
// 45 bytes with its one attempt (33 without) where its JSON took 280; a
// poll's answer, rendered from the decoded job.Record, is the same byte
// for byte (TestCompactRoundTrip).
func Encode(r *job.Record) ([]byte, error) {
	code := codeOther
	if i := slices.Index(statusCodes, r.Status); i >= 0 {
		code = byte(i)
	}
	if r.Gen < 0 || r.Attempts < 0 {
		return nil, fmt.Errorf("encode record %s: negative gen or attempts", r.ID)
	}
	var flags uint64
	times := []time.Time{r.AcceptedAt, r.UpdatedAt}
	if r.DeadLettered {
		flags |= fDeadLettered
	}
	if c := r.CompletedAt; c != nil {
		flags |= fCompleted
		if c.Equal(r.UpdatedAt) && offset(*c) == offset(r.UpdatedAt) {
			flags |= fCompletedIsUpdated
		} else {
			times = append(times, *c)
		}
	}
	wide := func(t time.Time) {
		if t.Year() < 1700 || t.Year() > 2200 { // beyond int64 nanoseconds
			flags |= fWideTimes
		}
		if offset(t) != 0 {
			flags |= fOffsets
		}
	}
	for _, t := range times {
		wide(t)
	}
	for _, a := range r.AttemptLog {
		wide(a.At)
	}
	if len(r.AttemptLog) > 0 {
		flags |= fAttemptLog
	}
	if r.Response != nil {
		flags |= fResponse
	}
	if r.LastError != "" {
		flags |= fLastError
	}
	if r.Client != "" {
		flags |= fClient
	}
	b := make([]byte, 0, 48+len(r.Route)+len(r.Backend)+len(r.LastError)+responseSize(r.Response)+16*len(r.AttemptLog))
	b = append(b, Version, code)
	b = binary.AppendUvarint(b, uint64(r.Gen))
	b = binary.AppendUvarint(b, uint64(r.Attempts))
	b = binary.AppendUvarint(b, flags)
	b = appendString(b, r.Route)
	b = appendString(b, r.Backend)
	if flags&fClient != 0 {
		b = appendString(b, r.Client)
	}
	if code == codeOther {
		b = appendString(b, string(r.Status))
	}
	if flags&fLastError != 0 {
		b = appendString(b, r.LastError)
	}
	for i, t := range times {
		switch {
		case flags&fWideTimes != 0:
			b = binary.AppendVarint(b, t.Unix())
			b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
		case i == 0:
			b = binary.AppendVarint(b, t.UnixNano())
		default:
			b = binary.AppendVarint(b, t.UnixNano()-r.AcceptedAt.UnixNano())
		}
	}
	if flags&fOffsets != 0 {
		for _, t := range times {
			b = binary.AppendVarint(b, int64(offset(t)))
		}
	}
	if p := r.Response; p != nil {
		b = binary.AppendVarint(b, int64(p.Status))
		var rf uint64
		if p.Truncated {
			rf |= rTruncated
		}
		if p.Headers == nil {
			rf |= rNilHeaders
		}
		switch p.BodyEncoding {
		case "utf8":
			rf |= rUTF8
		case "base64":
			rf |= rBase64
		case "":
		default:
			rf |= rOtherEncoding
		}
		b = binary.AppendUvarint(b, rf)
		if rf&rOtherEncoding != 0 {
			b = appendString(b, p.BodyEncoding)
		}
		b = binary.AppendUvarint(b, uint64(len(p.Headers)))
		for _, k := range slices.Sorted(mapKeys(p.Headers)) {
			b = appendString(b, k)
			b = appendString(b, p.Headers[k])
		}
		b = appendString(b, p.Body)
	}
	if flags&fAttemptLog != 0 {
		b = binary.AppendUvarint(b, uint64(len(r.AttemptLog)))
		for _, a := range r.AttemptLog {
			b = binary.AppendVarint(b, int64(a.Gen))
			b = binary.AppendVarint(b, int64(a.Attempt))
			if flags&fWideTimes != 0 {
				b = binary.AppendVarint(b, a.At.Unix())
				b = binary.AppendUvarint(b, uint64(a.At.Nanosecond()))
			} else {
				b = binary.AppendVarint(b, a.At.UnixNano()-r.AcceptedAt.UnixNano())
			}
			if flags&fOffsets != 0 {
				b = binary.AppendVarint(b, int64(offset(a.At)))
			}
			b = binary.AppendVarint(b, int64(a.Status))
			b = appendError(b, a.Error)
			b = binary.AppendVarint(b, a.DurationMS)
		}
	}
	return b, nil
}

// An attempt's error is one byte for a known category
// (job.ErrorCategories): its index + 2. 0 is no error and 1 an error text
// that follows as a string.
func appendError(b []byte, e string) []byte {
	switch i := slices.Index(job.ErrorCategories, e); {
	case e == "":
		return append(b, 0)
	case i >= 0:
		return append(b, byte(i+2))
	}
	b = append(b, 1)
	return appendString(b, e)
}

func (d *reader) attemptError() string {
	switch c := d.uvarint(); {
	case c == 0 || d.err != nil:
		return ""
	case c == 1:
		return d.string()
	case c-2 < uint64(len(job.ErrorCategories)):
		return job.ErrorCategories[c-2]
	default:
		d.err = fmt.Errorf("unknown attempt error code %d", c)
		return ""
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func responseSize(p *job.Response) int {
	if p == nil {
		return 0
	}
	n := 16 + len(p.Body)
	for k, v := range p.Headers {
		n += len(k) + len(v) + 4
	}
	return n
}

func offset(t time.Time) int {
	_, off := t.Zone()
	return off
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Decode reads id's record from v: the compact form Encode writes, or the
// legacy JSON (which carries its own id).
func Decode(id string, v []byte) (*job.Record, error) {
	if len(v) > 0 && v[0] == '{' {
		return decodeLegacy(v)
	}
	r, err := decodeCompact(v)
	if err != nil {
		return nil, fmt.Errorf("result store: corrupt record %s: %v", id, err)
	}
	r.ID = id
	return r, nil
}

func decodeLegacy(v []byte) (*job.Record, error) {
	var sr legacy
	if err := json.Unmarshal(v, &sr); err != nil || sr.Record == nil {
		return nil, fmt.Errorf("result store: corrupt record: %v", err)
	}
	sr.Record.Client, sr.Record.Gen = sr.Client, sr.Gen
	return sr.Record, nil
}

var errShort = errors.New("truncated")

// reader reads the compact form; its first error sticks.
type reader struct {
	b   []byte
	err error
}

func (d *reader) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *reader) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *reader) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func decodeCompact(v []byte) (*job.Record, error) {
	if len(v) < 2 || v[0] != Version {
		return nil, fmt.Errorf("unknown record format %.1q", v)
	}
	r := &job.Record{}
	code := v[1]
	d := &reader{b: v[2:]}
	r.Gen = int(d.uvarint())
	r.Attempts = int(d.uvarint())
	flags := d.uvarint()
	r.Route = d.string()
	r.Backend = d.string()
	if flags&fClient != 0 {
		r.Client = d.string()
	}
	switch {
	case code < codeOther:
		r.Status = statusCodes[code]
	case code == codeOther:
		r.Status = job.Status(d.string())
	default:
		return nil, fmt.Errorf("unknown status code %d", code)
	}
	if flags&fLastError != 0 {
		r.LastError = d.string()
	}
	r.DeadLettered = flags&fDeadLettered != 0
	n := 2
	if flags&fCompleted != 0 && flags&fCompletedIsUpdated == 0 {
		n = 3
	}
	times := make([]time.Time, n)
	for i := range times {
		switch {
		case flags&fWideTimes != 0:
			sec := d.varint()
			times[i] = time.Unix(sec, int64(d.uvarint()))
		case i == 0:
			times[i] = time.Unix(0, d.varint())
		default:
			times[i] = time.Unix(0, times[0].UnixNano()+d.varint())
		}
	}
	for i := range times {
		off := 0
		if flags&fOffsets != 0 {
			off = int(d.varint())
		}
		if off == 0 {
			times[i] = times[i].UTC()
		} else {
			times[i] = times[i].In(time.FixedZone("", off))
		}
	}
	r.AcceptedAt, r.UpdatedAt = times[0], times[1]
	if flags&fCompleted != 0 {
		c := times[len(times)-1]
		if flags&fCompletedIsUpdated != 0 {
			c = r.UpdatedAt
		}
		r.CompletedAt = &c
	}
	if flags&fResponse != 0 {
		p := &job.Response{Status: int(d.varint())}
		rf := d.uvarint()
		p.Truncated = rf&rTruncated != 0
		switch {
		case rf&rUTF8 != 0:
			p.BodyEncoding = "utf8"
		case rf&rBase64 != 0:
			p.BodyEncoding = "base64"
		case rf&rOtherEncoding != 0:
			p.BodyEncoding = d.string()
		}
		nh := d.uvarint()
		switch {
		case rf&rNilHeaders == 0:
			p.Headers = make(map[string]string, min(nh, 64))
		case nh > 0:
			d.err = errors.New("headers in a response without any")
		}
		for i := uint64(0); i < nh && d.err == nil; i++ {
			k := d.string()
			p.Headers[k] = d.string()
		}
		p.Body = d.string()
		r.Response = p
	}
	if flags&fAttemptLog != 0 {
		r.AttemptLog = d.attemptLog(flags, r.AcceptedAt)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d bytes left over", len(d.b))
	}
	return r, nil
}

// attemptLog reads the attempt log that Encode wrote with flags.
func (d *reader) attemptLog(flags uint64, accepted time.Time) job.AttemptLog {
	n := d.uvarint()
	if d.err == nil && n == 0 {
		d.err = errors.New("an empty attempt log")
	}
	// Each attempt takes at least 6 bytes: a count beyond that is corrupt,
	// and makes no big allocation.
	log := make(job.AttemptLog, 0, min(n, uint64(len(d.b)/6)+1))
	for i := uint64(0); i < n && d.err == nil; i++ {
		a := job.Attempt{Gen: int(d.varint()), Attempt: int(d.varint())}
		if flags&fWideTimes != 0 {
			sec := d.varint()
			a.At = time.Unix(sec, int64(d.uvarint()))
		} else {
			a.At = time.Unix(0, accepted.UnixNano()+d.varint())
		}
		off := 0
		if flags&fOffsets != 0 {
			off = int(d.varint())
		}
		if off == 0 {
			a.At = a.At.UTC()
		} else {
			a.At = a.At.In(time.FixedZone("", off))
		}
		a.Status = int(d.varint())
		a.Error = d.attemptError()
		a.DurationMS = d.varint()
		log = append(log, a)
	}
	return log
}

// Project is the record an event makes on its own: what a record becomes
// whenever Apply takes the event.
func Project(e *job.Event) *job.Record {
	var r job.Record
	r.Apply(e)
	return &r
}

// GroupByID splits events by record, keeping each record's events in
// their batch order (Apply's outcome depends on it) and the records in
// order of first appearance.
func GroupByID(events []*job.Event) (order []string, byID map[string][]*job.Event) {
	byID = make(map[string][]*job.Event, len(events))
	order = make([]string, 0, len(events))
	for _, e := range events {
		if _, ok := byID[e.ID]; !ok {
			order = append(order, e.ID)
		}
		byID[e.ID] = append(byID[e.ID], e)
	}
	return order, byID
}
