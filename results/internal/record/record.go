package record

import (
	"encoding/json"
	"fmt"

	"github.com/sluice-gw/sluice/job"
)

// stored is a record as both stores keep it: JSON, led by its merge key,
// so the Redis merge script compares an event with the stored record by
// reading the value's first bytes instead of decoding a body of up to
// 2 MiB. Records written before the merge key existed lack it; both
// stores still read them.
type stored struct {
	// Merge is [generation, attempts, status rank]: what job.Record.Apply
	// compares. It must stay the first field (the Redis merge script reads
	// it by position).
	Merge *[3]int `json:"merge,omitempty"`
	*job.Record
	Client string `json:"client,omitempty"`
	Gen    int    `json:"gen,omitempty"`
}

// Encode encodes r with job.Marshal, led by its merge key: a backend's
// "<" stays one byte instead of the six of "\u003c", so stored bodies keep
// their size.
func Encode(r *job.Record) ([]byte, error) {
	return job.Marshal(stored{
		Merge:  &[3]int{r.Gen, r.Attempts, r.Status.Rank()},
		Record: r, Client: r.Client, Gen: r.Gen,
	})
}

// Decode reads a record Encode wrote, or one written before merge keys
// existed.
func Decode(v []byte) (*job.Record, error) {
	var sr stored
	if err := json.Unmarshal(v, &sr); err != nil || sr.Record == nil {
		return nil, fmt.Errorf("result store: corrupt record: %v", err)
	}
	sr.Record.Client, sr.Record.Gen = sr.Client, sr.Gen
	return sr.Record, nil
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
