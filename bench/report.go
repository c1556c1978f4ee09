package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"text/tabwriter"
	"time"
)

// environment says what a run ran on and with.
type environment struct {
	Cores    int      `json:"cores"`
	Go       string   `json:"go"`
	Duration string   `json:"duration"` // of each ingest measurement
	Conns    int      `json:"conns"`
	Parts    []string `json:"parts"`
}

// A measurement is one load run as reported.
type measurement struct {
	Part      string  `json:"part"`
	Name      string  `json:"name"`
	Label     string  `json:"label"`
	Unit      string  `json:"unit"` // "req/s" (HTTP) or "msg/s" (a raw broker client)
	Conns     int     `json:"conns"`
	Seconds   float64 `json:"seconds"`
	Calls     int     `json:"calls"` // answered, 2xx or not
	OK        int     `json:"ok"`
	Non2xx    int     `json:"non_2xx"`
	Errors    int     `json:"errors"`
	Rate      float64 `json:"rate"` // answered calls per second
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	CPUusCall float64 `json:"cpu_us_per_call,omitempty"` // of the process under test, where measured
}

func newMeasurement(part, name, label, unit string, conns int, r loadResult) measurement {
	return measurement{Part: part, Name: name, Label: label, Unit: unit, Conns: conns,
		Seconds: r.elapsed.Seconds(), Calls: r.calls, OK: r.ok(), Non2xx: r.calls - r.ok(), Errors: r.errors,
		Rate: r.rps(), P50ms: ms(r.pct(0.50)), P99ms: ms(r.pct(0.99)), CPUusCall: us(r.cpuPerCall())}
}

// row is the measurement as one line of the text report.
func (m measurement) row() string {
	s := fmt.Sprintf("  %-40s %9.0f %s   p50 %6.2f ms   p99 %6.2f ms   (non-2xx %d, errors %d)",
		m.Label, m.Rate, m.Unit, m.P50ms, m.P99ms, m.Non2xx, m.Errors)
	if m.CPUusCall > 0 {
		s += fmt.Sprintf("   CPU %.0f µs/req", m.CPUusCall)
	}
	return s
}

// A report is everything one run measured and how it compares with the
// goals: the -json document.
type report struct {
	Env          environment        `json:"env"`
	Measurements []measurement      `json:"measurements"`
	Figures      map[string]float64 `json:"figures"`
	Goals        []goalResult       `json:"goals"`
	Skipped      map[string]string  `json:"skipped,omitempty"` // part: why
	Errors       map[string]string  `json:"errors,omitempty"`  // part: what stopped it
	Pass         bool               `json:"pass"`
}

func newReport(env environment) *report {
	return &report{Env: env, Measurements: []measurement{}, Figures: map[string]float64{},
		Skipped: map[string]string{}, Errors: map[string]string{}}
}

// figure records a figure; one that is not a number is left out, so that
// goals on it are skipped rather than compared with garbage.
func (r *report) figure(key string, v float64) {
	if !math.IsNaN(v) && !math.IsInf(v, 0) {
		r.Figures[key] = v
	}
}

// add records a measurement and its figures: <part>.<name>.rps, .p50_ms,
// .p99_ms and, where measured, .cpu_us (per call).
func (r *report) add(m measurement) {
	r.Measurements = append(r.Measurements, m)
	k := m.Part + "." + m.Name
	r.figure(k+".rps", m.Rate)
	r.figure(k+".p50_ms", m.P50ms)
	r.figure(k+".p99_ms", m.P99ms)
	if m.CPUusCall > 0 {
		r.figure(k+".cpu_us", m.CPUusCall)
	}
}

// finish evaluates the goals; after it, failed tells the exit status.
func (r *report) finish(gs []goal) {
	r.Goals = evaluate(gs, r.Figures)
	r.Pass = !r.failed()
}

// failed reports whether a gate goal was missed or a part could not run.
func (r *report) failed() bool { return missed(r.Goals) || len(r.Errors) > 0 }

func writeJSON(w io.Writer, r *report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeGoals prints the goal table and a summary line.
func writeGoals(w io.Writer, r *report) error {
	fmt.Fprintln(w, "== goals")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  PART\tFIGURE\tCOMPARED WITH\tMEASURED\tGOAL\tRESULT")
	var gates, passed, missedN, skipped, aims, aimsMet int
	for _, g := range r.Goals {
		measured := "-"
		if g.Measured != nil {
			measured = formatValue(*g.Measured, g.Unit)
		}
		baseline := g.Baseline
		if baseline == "" {
			baseline = "-"
		}
		result := g.Result
		if g.Aim {
			aims++
			switch g.Result {
			case pass:
				aimsMet++
				result = "aim met"
			case miss:
				result = "aim, not yet"
			}
		} else {
			gates++
			switch g.Result {
			case pass:
				passed++
			case miss:
				missedN++
			case skip:
				skipped++
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", g.Part, g.What, baseline, measured, formatGoal(g), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "  %d goals: %d passed, %d missed, %d skipped; %d of %d aims met (aims never fail the run)\n",
		gates, passed, missedN, skipped, aimsMet, aims)
	for _, part := range r.Env.Parts {
		if why, ok := r.Skipped[part]; ok {
			fmt.Fprintf(w, "  %s: %s\n", part, why)
		}
		if err, ok := r.Errors[part]; ok {
			fmt.Fprintf(w, "  %s failed: %s\n", part, err)
		}
	}
	if r.failed() {
		_, err := fmt.Fprintln(w, "  FAIL")
		return err
	}
	_, err := fmt.Fprintln(w, "  ok")
	return err
}

// formatGoal writes what a goal wants, e.g. ">= 0.2x", "within ±3 %", "yes".
func formatGoal(g goalResult) string {
	if g.Unit == "bool" {
		return formatValue(g.Want, g.Unit)
	}
	want := strconv.FormatFloat(g.Want, 'g', -1, 64)
	switch g.Unit {
	case "x", "/s":
		want += g.Unit
	case "":
	default:
		want += " " + g.Unit
	}
	if cmp(g.Cmp) == within {
		return "within ±" + want
	}
	return g.Cmp + " " + want
}

// formatValue writes a figure in its unit.
func formatValue(v float64, unit string) string {
	switch unit {
	case "x":
		return fmt.Sprintf("%.2fx", v)
	case "ms":
		return fmt.Sprintf("%.2f ms", v)
	case "µs":
		return fmt.Sprintf("%.0f µs", v)
	case "/s":
		return fmt.Sprintf("%.1f/s", v)
	case "%":
		return fmt.Sprintf("%+.2f %%", v)
	case "MiB":
		return fmt.Sprintf("%.0f MiB", v)
	case "bool":
		if v != 0 {
			return "yes"
		}
		return "no"
	case "":
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f %s", v, unit)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
