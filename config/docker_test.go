package config

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/knative"
)

// dockerfile is the repository's Dockerfile, parsed just enough: logical
// lines (continuations joined, comments dropped) grouped into stages.
type dockerfile struct {
	stages []stage
}

type stage struct {
	base, name   string
	instructions []instruction
}

type instruction struct {
	cmd  string // upper case
	args string
}

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		if s := strings.TrimSpace(cur.String()); s != "" {
			logical = append(logical, s)
		}
		cur.Reset()
	}
	var df dockerfile
	for _, l := range logical {
		cmd, args, _ := strings.Cut(l, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{}
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					st.name = f[i+1]
					i++
				case st.base == "":
					st.base = f[i]
				}
			}
			df.stages = append(df.stages, st)
			continue
		}
		if len(df.stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s: %s before the first FROM", path, in.cmd)
			}
			continue
		}
		last := &df.stages[len(df.stages)-1]
		last.instructions = append(last.instructions, in)
	}
	return df
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instructions {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s stage) text() string {
	var b strings.Builder
	for _, in := range s.instructions {
		b.WriteString(in.cmd + " " + in.args + "\n")
	}
	return b.String()
}

func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(in.args), &out); err != nil {
		t.Fatalf("%s %s: not the exec (JSON) form: %v", in.cmd, in.args, err)
	}
	return out
}

var pinnedTag = regexp.MustCompile(`^[^@]+:[A-Za-z0-9_][A-Za-z0-9_.-]*$|@sha256:[0-9a-f]{64}$`)

func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t, "../Dockerfile")
	if len(df.stages) < 3 {
		t.Fatalf("%d stages; want build, ort and runtime stages", len(df.stages))
	}
	names := map[string]bool{}
	for _, s := range df.stages {
		names[s.name] = true
	}
	for i, s := range df.stages {
		if names[s.base] {
			continue // FROM an earlier stage
		}
		ref := s.base
		if !pinnedTag.MatchString(ref) || strings.HasSuffix(ref, ":latest") {
			t.Errorf("stage %d: base image %q has no tag, or :latest; pin a version", i, ref)
		}
	}

	var build, ort *stage
	for i := range df.stages {
		s := &df.stages[i]
		switch {
		case strings.HasPrefix(s.base, "golang:"):
			build = s
		case strings.HasPrefix(s.base, "node:"):
			ort = s
		}
	}
	if build == nil || !strings.HasSuffix(build.base, "-bookworm") {
		t.Fatal("no golang:*-bookworm build stage (glibc must match the runtime stage's Debian 12)")
	}
	if !strings.Contains(build.text(), "CGO_ENABLED=1") || !regexp.MustCompile(`go build [^\n]*-trimpath`).MatchString(build.text()) {
		t.Error("build stage must build with CGO_ENABLED=1 and -trimpath (onnxruntime_go uses cgo)")
	}
	if ort == nil {
		t.Fatal("no node stage fetching ONNX Runtime")
	}
	ortText := ort.text()
	for _, want := range []string{"npm pack onnxruntime-node@", "--ignore-scripts", "ORT_VERSION=1.24.1",
		"bin/napi-v6/linux/x64/libonnxruntime.so.1", "sha256sum -c",
		"53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4"} {
		if !strings.Contains(ortText, want) {
			t.Errorf("ort stage lacks %q", want)
		}
	}

	final := df.stages[len(df.stages)-1]
	if names[final.base] || !(strings.HasPrefix(final.base, "gcr.io/distroless/cc-debian12") || strings.HasPrefix(final.base, "debian:bookworm-slim")) {
		t.Errorf("runtime stage FROM %s; want distroless cc-debian12 or debian:bookworm-slim", final.base)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Fatal("runtime stage has no USER")
	}
	user, _, _ := strings.Cut(users[len(users)-1].args, ":")
	if user == "0" || user == "root" || user == "" {
		t.Errorf("runtime stage runs as %q", users[len(users)-1].args)
	}
	if user != "65532" && user != "nonroot" {
		t.Errorf("USER %s; the Knative manifests run as %d", user, knative.NonRootUID)
	}
	copies := final.text()
	if !strings.Contains(copies, " "+knative.ORTLibrary+"\n") {
		t.Errorf("runtime stage does not put ONNX Runtime at %s (where the runtime looks)", knative.ORTLibrary)
	}
	if !regexp.MustCompile(`COPY --from=\S+ \S*functions \S*` + knative.FunctionsDir + `\n`).MatchString(copies) {
		t.Errorf("runtime stage does not bake the functions in under %s", knative.FunctionsDir)
	}
	ep := final.all("ENTRYPOINT")
	if len(ep) != 1 || strings.Join(execForm(t, ep[0]), " ") != listener.RuntimeBinary {
		t.Errorf(`want ENTRYPOINT [%q], got %v`, listener.RuntimeBinary, ep)
	}
	cmd := final.all("CMD")
	if len(cmd) != 1 || strings.Join(execForm(t, cmd[0]), " ") != "--function /functions/fraud" {
		t.Errorf(`want CMD ["--function","/functions/fraud"], got %v`, cmd)
	}
	for _, bin := range []string{"pilotlight", listener.RuntimeBinary} {
		if !regexp.MustCompile(`COPY --from=\S+ \S+ /usr/local/bin/` + bin + `\n`).MatchString(copies) {
			t.Errorf("%s is not on the runtime stage's PATH (/usr/local/bin)", bin)
		}
	}
}

// TestDockerfileParserIsStrict checks the invariants above reject bad files.
func TestDockerfileParserIsStrict(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/Dockerfile"
	if err := os.WriteFile(path, []byte("FROM golang AS build\nRUN go build \\\n  -o x .\nFROM ubuntu:latest\nUSER root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	df := parseDockerfile(t, path)
	if len(df.stages) != 2 || df.stages[0].name != "build" || df.stages[0].base != "golang" {
		t.Fatalf("parsed %+v", df.stages)
	}
	if pinnedTag.MatchString("golang") || !pinnedTag.MatchString("golang:1.26-bookworm") ||
		!pinnedTag.MatchString("gcr.io/distroless/cc-debian12:nonroot") || pinnedTag.MatchString("localhost:5000/img") {
		t.Error("tag pinning check is wrong")
	}
	if got := df.stages[0].all("RUN"); len(got) != 1 || got[0].args != "go build  -o x ." {
		t.Errorf("continuation lines: %+v", got)
	}
}
