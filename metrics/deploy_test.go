package metrics

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"
)

// sluiceName finds the sluice series an expression uses.
var sluiceName = regexp.MustCompile(`\bsluice_[a-z0-9_]+`)

// exported scrapes a real handler (every source set) and returns the
// series names a query may use: each family, and a histogram's _bucket,
// _sum and _count.
func exported(t *testing.T) (names map[string]bool, families []string) {
	t.Helper()
	srv := httptest.NewServer(New(sources(t)))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	names = map[string]bool{}
	for name, f := range parse(t, body) {
		names[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		}
		if strings.HasPrefix(name, "sluice_") {
			families = append(families, name)
		}
	}
	slices.Sort(families)
	return names, families
}

// TestGrafanaDashboard: deploy/grafana-dashboard.json is a dashboard whose
// queries use only series /metrics exports, and every sluice family in
// at least one panel.
func TestGrafanaDashboard(t *testing.T) {
	names, families := exported(t)
	b, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title, UID    string
		SchemaVersion int
		Panels        []struct {
			ID          int
			Title, Type string
			Datasource  struct{ UID string }
			GridPos     struct{ H, W, X, Y int }
			Targets     []struct {
				RefID, Expr, LegendFormat string
				Datasource                struct{ UID string }
			}
		}
		Templating struct {
			List []struct {
				Name, Type, Definition string
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("not a dashboard: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.SchemaVersion == 0 || len(dash.Panels) == 0 {
		t.Fatalf("title %q, uid %q, schemaVersion %d, %d panels", dash.Title, dash.UID, dash.SchemaVersion, len(dash.Panels))
	}
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, n := range sluiceName.FindAllString(expr, -1) {
			used[n] = true
			if !names[n] {
				t.Errorf("%s uses %s, which /metrics does not export", where, n)
			}
		}
	}
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		check("variable "+v.Name, v.Definition)
	}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 || p.Datasource.UID != "${datasource}" ||
			p.GridPos.W < 1 || p.GridPos.H < 1 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: %+v", p.Title, p)
		}
		for _, tg := range p.Targets {
			if tg.RefID == "" || tg.Expr == "" {
				t.Errorf("panel %q: target without refId or expr: %+v", p.Title, tg)
			}
			for _, v := range regexp.MustCompile(`\$(\w+)`).FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[v[1]] && !strings.HasPrefix(v[1], "__") {
					t.Errorf("panel %q uses the undefined variable $%s", p.Title, v[1])
				}
			}
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, f := range families {
		if !used[f] && !used[f+"_bucket"] {
			t.Errorf("no panel shows %s", f)
		}
	}
}

// TestPrometheusAlerts: deploy/prometheus-alerts.yml is a rule file in
// Prometheus's shape whose expressions use only series /metrics exports.
func TestPrometheusAlerts(t *testing.T) {
	names, _ := exported(t)
	b, err := os.ReadFile("../deploy/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt key would be ignored by Prometheus's own loader only until it fails there
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("not a rule file: %v", err)
	}
	seen := map[string]bool{}
	for _, g := range rules.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q with %d rules", g.Name, len(g.Rules))
		}
		for _, r := range g.Rules {
			if r.Alert == "" || seen[r.Alert] || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: needs a unique alert name, an expr, a severity and a summary", r.Alert)
			}
			seen[r.Alert] = true
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for: %v", r.Alert, err)
				}
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") {
				t.Errorf("rule %s: unbalanced parentheses in %s", r.Alert, r.Expr)
			}
			used := sluiceName.FindAllString(r.Expr, -1)
			if len(used) == 0 {
				t.Errorf("rule %s uses no sluice series", r.Alert)
			}
			for _, n := range used {
				if !names[n] {
					t.Errorf("rule %s uses %s, which /metrics does not export", r.Alert, n)
				}
			}
		}
	}
	for _, want := range []string{"SluiceBacklogGrowing", "SluiceDeadLetters", "SluiceBreakerOpen", "SluiceIngest503s"} {
		if !seen[want] {
			t.Errorf("no %s rule", want)
		}
	}
}
