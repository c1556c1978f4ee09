package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/gateway"
)

func flagSet() *flag.FlagSet { return flag.NewFlagSet("test", flag.ContinueOnError) }

// loadCompose loads docker-compose.yml as Docker Compose does (compose-go is
// its loader): schema, interpolation from the environment, consistency.
// Every profile is on, so that nothing escapes the checks.
func loadCompose(t *testing.T) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
		cli.WithOsEnv, cli.WithWorkingDirectory("../.."), cli.WithName("sluice"), cli.WithProfiles([]string{"*"}))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(t.Context())
}

// argValue is the value of flag name in a command line, or "".
func argValue(args []string, name string) string {
	for i, a := range args {
		if a == "-"+name || a == "--"+name {
			if i+1 < len(args) {
				return args[i+1]
			}
		}
		if v, ok := strings.CutPrefix(a, "-"+name+"="); ok {
			return v
		}
	}
	return ""
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return p
}

// TestComposeFile validates docker-compose.yml with compose-go, the library
// Docker Compose loads files with, so no Docker is needed: what
// `docker compose config -q` checks (schema, interpolation, consistency),
// and what sluice needs of it: one build of the image, mounted files that
// exist and configs that pass `sluice check` with the service's
// environment, every role run, published ports that are the ones sluice
// listens on (admin and stats on this host only), and every service started
// used by a sluice process that waits for it.
func TestComposeFile(t *testing.T) {
	t.Run("the admin token is required", func(t *testing.T) {
		t.Setenv("SLUICE_ADMIN_TOKEN", "")
		_, err := loadCompose(t)
		if err == nil || !strings.Contains(err.Error(), "set SLUICE_ADMIN_TOKEN, the admin API token") {
			t.Fatalf("without SLUICE_ADMIN_TOKEN: %v, want the file's own message", err)
		}
	})
	t.Setenv("SLUICE_ADMIN_TOKEN", "compose-test-token")
	p, err := loadCompose(t)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	root, _ := filepath.Abs("../..")

	// One service builds the image from this checkout; the others run it.
	var image string
	for _, s := range p.Services {
		if s.Build == nil {
			continue
		}
		if image != "" {
			t.Errorf("service %s builds an image too: build it once, and use image: elsewhere", s.Name)
			continue
		}
		image = s.Image
		if image == "" {
			t.Errorf("service %s builds without tagging (image:), so no other service can run its image", s.Name)
		}
		if s.Build.Context != root {
			t.Errorf("service %s builds %s, want the repository %s", s.Name, s.Build.Context, root)
		}
		df := s.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(s.Build.Context, df)
		}
		if _, err := os.Stat(df); err != nil {
			t.Errorf("service %s: %v", s.Name, err)
		}
		if s.PullPolicy != types.PullPolicyBuild {
			t.Errorf("service %s: pull_policy %q, want build (the image is ours: never pulled)", s.Name, s.PullPolicy)
		}
	}
	if image == "" {
		t.Fatal("no service builds sluice's image")
	}

	type process struct {
		name   string
		roles  []gateway.Role
		cfg    string // its config inside the container
		source string // the mounted file
	}
	var sluices []process
	demoListen := map[string]string{} // demo backend service -> its -listen
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("service %s mounts %s: %v", s.Name, v.Source, err)
				}
			}
		}
		if s.Image != image {
			continue
		}
		if s.Build == nil && s.PullPolicy != types.PullPolicyNever {
			t.Errorf("service %s: pull_policy %q, want never (its image is built by the project)", s.Name, s.PullPolicy)
		}
		if len(s.Command) == 0 {
			t.Errorf("service %s runs the image's default command, the demo: give it one", s.Name)
			continue
		}
		switch s.Command[0] {
		case "serve":
			proc := process{name: s.Name, roles: gateway.AllRoles, cfg: argValue(s.Command, "config")}
			if r := argValue(s.Command, "roles"); r != "" {
				if proc.roles, err = gateway.ParseRoles(r); err != nil {
					t.Errorf("service %s: %v", s.Name, err)
				}
			}
			for _, v := range s.Volumes {
				if v.Type == types.VolumeTypeBind && v.Target == proc.cfg {
					proc.source = v.Source
				}
			}
			if proc.source == "" {
				t.Errorf("service %s: -config %q is not a file the service mounts", s.Name, proc.cfg)
				continue
			}
			sluices = append(sluices, proc)
		case "demo-backend":
			demoListen[s.Name] = argValue(s.Command, "listen")
			if demoListen[s.Name] == "" {
				t.Errorf("service %s: demo-backend without -listen listens on 127.0.0.1 in its container, out of reach", s.Name)
			}
		default:
			t.Errorf("service %s runs `sluice %s`", s.Name, strings.Join(s.Command, " "))
		}
	}

	used := map[string]bool{} // services some sluice process uses
	var roles []gateway.Role
	for _, proc := range sluices {
		s := p.Services[proc.name]
		// The container's environment: the service's, none of this test's.
		for _, kv := range os.Environ() {
			if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "SLUICE_") {
				t.Setenv(k, "")
			}
		}
		for k, v := range s.Environment {
			if v != nil {
				t.Setenv(k, *v)
			}
		}
		var stdout, stderr strings.Builder
		if err := run(t.Context(), []string{"check", "-config", proc.source}, &stdout, &stderr, nil); err != nil {
			t.Errorf("service %s: sluice check %s: %v\n%s", s.Name, proc.source, err, stderr.String())
			continue
		}
		cfg, err := config.Load(proc.source)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range proc.roles {
			if !slices.Contains(roles, r) {
				roles = append(roles, r)
			}
		}

		// The services it reaches, each by name and port.
		needs := map[string]string{} // service -> port
		need := func(what, hostport string) {
			host, port, err := net.SplitHostPort(hostport)
			if err != nil {
				t.Errorf("service %s: %s %q: %v", s.Name, what, hostport, err)
				return
			}
			if _, ok := p.Services[host]; !ok {
				t.Errorf("service %s: %s %s is not a service of the file", s.Name, what, hostport)
				return
			}
			needs[host] = port
		}
		switch cfg.Broker.Kind {
		case "kafka":
			for _, b := range cfg.Broker.Kafka.Brokers {
				need("broker.kafka.brokers", b)
			}
		case "rabbitmq":
			if u, err := url.Parse(cfg.Broker.RabbitMQ.URL); err == nil {
				need("broker.rabbitmq.url", u.Host)
			}
		default:
			t.Errorf("service %s: broker.kind %q keeps the queue inside one container", s.Name, cfg.Broker.Kind)
		}
		if cfg.Results.Store == "redis" {
			need("results.redis.addr", cfg.Results.Redis.Addr)
		}
		if slices.Contains(proc.roles, gateway.Worker) {
			for _, b := range cfg.Backends {
				for _, raw := range b.URLs {
					u, err := url.Parse(raw)
					if err != nil || u.Port() == "" {
						t.Errorf("service %s: backend url %q without a port", s.Name, raw)
						continue
					}
					need("backends["+b.Name+"].urls", u.Host)
					if l, ok := demoListen[u.Hostname()]; ok && port(t, l) != u.Port() {
						t.Errorf("service %s delivers to %s, but %s listens on %s", s.Name, raw, u.Hostname(), l)
					}
				}
			}
		}
		for svc := range needs {
			used[svc] = true
			if _, ok := s.DependsOn[svc]; !ok {
				t.Errorf("service %s uses %s but does not depend_on it", s.Name, svc)
			}
		}
		for svc := range s.DependsOn {
			if _, ok := needs[svc]; !ok {
				t.Errorf("service %s depends_on %s, which its config does not use", s.Name, svc)
			}
		}

		// Published ports: the client port for ingress, the admin port on
		// this host only.
		published := map[uint32]types.ServicePortConfig{}
		for _, pc := range s.Ports {
			published[pc.Target] = pc
		}
		ingressPort, adminPort := port(t, cfg.Listen), port(t, cfg.AdminListen)
		for target, pc := range published {
			switch fmt.Sprint(target) {
			case ingressPort:
				if !slices.Contains(proc.roles, gateway.Ingress) {
					t.Errorf("service %s publishes %d, but runs no ingress", s.Name, target)
				}
			case adminPort:
				if pc.HostIP != "127.0.0.1" {
					t.Errorf("service %s publishes its admin port %d on %q, want 127.0.0.1", s.Name, target, pc.HostIP)
				}
			default:
				t.Errorf("service %s publishes %d, where sluice does not listen (listen %s, admin_listen %s)",
					s.Name, target, cfg.Listen, cfg.AdminListen)
			}
		}
		if slices.Contains(proc.roles, gateway.Ingress) {
			if _, ok := published[uint32(mustAtoi(t, ingressPort))]; !ok {
				t.Errorf("service %s runs ingress, but does not publish its client port %s", s.Name, ingressPort)
			}
		}
	}
	for _, r := range gateway.AllRoles {
		if !slices.Contains(roles, r) {
			t.Errorf("no sluice service runs the %s role", r)
		}
	}
	for name, listen := range demoListen {
		s := p.Services[name]
		if len(s.Ports) != 1 || fmt.Sprint(s.Ports[0].Target) != port(t, listen) || s.Ports[0].HostIP != "127.0.0.1" {
			t.Errorf("service %s: ports %+v, want its -listen port %s published on 127.0.0.1 (GET /stats from this host)",
				name, s.Ports, port(t, listen))
		}
	}
	for name := range p.Services {
		if slices.ContainsFunc(sluices, func(p process) bool { return p.name == name }) {
			continue
		}
		if !used[name] {
			t.Errorf("service %s is started, but no sluice service uses it", name)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// dockerfile is what the tests read of the Dockerfile's final stage.
type dockerfile struct {
	copies     []dockerCopy      // COPY lines of the final stage
	env        map[string]string // ENV of the final stage
	user       string
	entrypoint []string
	cmd        []string
	build      string // the build stage's RUN lines
	base       string // the final stage's FROM
}

type dockerCopy struct {
	from, chown, src, dst string
}

// readDockerfile parses the Dockerfile's instructions: the subset it uses
// (FROM, COPY, RUN, ENV, USER, ENTRYPOINT and CMD in JSON form).
func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	cont := ""
	for _, l := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cont == "") {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cont += s + " "
			continue
		}
		lines = append(lines, cont+trimmed)
		cont = ""
	}
	d := dockerfile{env: map[string]string{}}
	stages := 0
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		final := stages == 2
		switch strings.ToUpper(instr) {
		case "FROM":
			stages++
			if stages == 2 {
				d.base = rest
			}
		case "RUN":
			if !final {
				d.build += rest + "\n"
			}
		case "COPY":
			if !final {
				continue
			}
			var c dockerCopy
			f := strings.Fields(rest)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				if v, ok := strings.CutPrefix(f[0], "--from="); ok {
					c.from = v
				}
				if v, ok := strings.CutPrefix(f[0], "--chown="); ok {
					c.chown = v
				}
				f = f[1:]
			}
			if len(f) != 2 {
				t.Fatalf("Dockerfile: %q: want one source and one destination", l)
			}
			c.src, c.dst = f[0], f[1]
			d.copies = append(d.copies, c)
		case "ENV":
			if k, v, ok := strings.Cut(rest, "="); ok && final {
				d.env[k] = v
			}
		case "USER":
			if final {
				d.user = rest
			}
		case "ENTRYPOINT", "CMD":
			var args []string
			if err := json.Unmarshal([]byte(rest), &args); err != nil {
				t.Fatalf("Dockerfile: %s not in JSON form: %v", instr, err)
			}
			if instr == "CMD" {
				d.cmd = args
			} else {
				d.entrypoint = args
			}
		}
	}
	if stages != 2 {
		t.Fatalf("Dockerfile: %d stages, want build and final", stages)
	}
	return d
}

// copySource is the repository file the final stage copies to dst.
func (d dockerfile) copySource(t *testing.T, dst string) string {
	t.Helper()
	for _, c := range d.copies {
		if c.from != "" {
			continue
		}
		if c.dst == dst {
			return c.src
		}
		if rel, ok := strings.CutPrefix(dst, strings.TrimSuffix(c.dst, "/")+"/"); ok {
			return path.Join(c.src, rel)
		}
	}
	t.Fatalf("Dockerfile: nothing is copied to %s", dst)
	return ""
}

// TestDockerfile checks what a build would use without building: every
// file copied from the context exists and is not in .dockerignore, the
// binary is stamped with its version, the user is nonroot, the entrypoint
// is the binary copied, and the default command's config is baked in,
// passes `sluice check` with no token, and keeps its data in the directory
// the image gives the nonroot user. TestDemoBanner runs that command.
func TestDockerfile(t *testing.T) {
	t.Setenv("SLUICE_ADMIN_TOKEN", "")
	d := readDockerfile(t)
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	ignored := func(p string) bool {
		for _, pat := range strings.Split(string(ignore), "\n") {
			pat = strings.TrimSuffix(strings.TrimSpace(pat), "/")
			if pat == "" || strings.HasPrefix(pat, "#") {
				continue
			}
			for q := p; q != "." && q != "/"; q = path.Dir(q) {
				if ok, _ := path.Match(pat, q); ok {
					return true
				}
			}
		}
		return false
	}
	if ignored(".git") {
		t.Error(".dockerignore leaves .git out: the build stage needs it for `git describe` (the version)")
	}
	if !strings.Contains(d.build, "-X main.version=") || !strings.Contains(d.build, "git describe") {
		t.Errorf("the build stage does not stamp the version:\n%s", d.build)
	}
	binary := ""
	writable := ""
	for _, c := range d.copies {
		switch {
		case c.from == "":
			if _, err := os.Stat(filepath.Join("../..", c.src)); err != nil {
				t.Errorf("COPY %s: %v", c.src, err)
			}
			if ignored(path.Clean(c.src)) {
				t.Errorf("COPY %s: .dockerignore leaves it out of the context", c.src)
			}
		case strings.Contains(d.build, "-o "+c.src+" "):
			binary = c.dst
		case c.chown == "65532:65532" || c.chown == "nonroot:nonroot":
			// The contents of src are copied into dst: each directory the
			// build stage made under src is the user's.
			for _, f := range strings.Fields(d.build) {
				if rel, ok := strings.CutPrefix(f, strings.TrimSuffix(c.src, "/")+"/"); ok && rel != "" {
					writable = path.Join(c.dst, rel)
				}
			}
		default:
			t.Errorf("COPY --from=%s %s: not something the build stage makes", c.from, c.src)
		}
	}
	if binary == "" || len(d.entrypoint) == 0 || d.entrypoint[0] != binary {
		t.Errorf("ENTRYPOINT %q, want the binary built (%q)", d.entrypoint, binary)
	}
	if d.user != "nonroot" && d.user != "65532" {
		t.Errorf("USER %q, want nonroot", d.user)
	}
	if !strings.Contains(d.base, "distroless") || !strings.HasSuffix(d.base, ":nonroot") {
		t.Errorf("final stage FROM %s, want a distroless nonroot image", d.base)
	}
	if len(d.cmd) == 0 || d.cmd[0] != "demo" || argValue(d.cmd, "config") != "" {
		t.Errorf("CMD %q, want demo with the config of $SLUICE_CONFIG", d.cmd)
	}
	cfgPath := d.env["SLUICE_CONFIG"]
	src := d.copySource(t, cfgPath)
	var stdout, stderr strings.Builder
	if err := run(t.Context(), []string{"check", "-config", filepath.Join("../..", src)}, &stdout, &stderr, nil); err != nil {
		t.Fatalf("the image's config %s (%s): %v\n%s", cfgPath, src, err, stderr.String())
	}
	// Relative paths resolve against the config's folder in the image.
	cfg, err := config.Load(filepath.Join("../..", src))
	if err != nil {
		t.Fatal(err)
	}
	imageDir := path.Dir(cfgPath)
	for _, r := range cfg.Routes {
		if r.Schema == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join("../..", d.copySource(t, path.Join(imageDir, r.Schema)))); err != nil {
			t.Errorf("routes[%s].schema: %v", r.Name, err)
		}
	}
	if writable == "" {
		t.Fatal("the image makes no directory for the nonroot user")
	}
	for key, dir := range map[string]string{"broker.embedded.dir": cfg.Broker.Embedded.Dir, "results.embedded.dir": cfg.Results.Embedded.Dir} {
		if !path.IsAbs(dir) || !strings.HasPrefix(path.Clean(dir)+"/", writable+"/") {
			t.Errorf("%s: %q, want a directory under %s (the nonroot user's)", key, dir, writable)
		}
	}
	if !config.Loopback(cfg.AdminListen) || config.Loopback(cfg.Listen) {
		t.Errorf("listen %q, admin_listen %q: want clients on every interface, admin inside the container", cfg.Listen, cfg.AdminListen)
	}
}
