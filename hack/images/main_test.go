package main

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestLayoutMatchesDockerfile: the files `make images` puts in the runtime
// and router images are the files the Dockerfile's final stage declares
// (its COPY destinations, and under /functions what its `find` selects),
// less the base image's own files (distroless there, ldd's libraries
// here). The Dockerfile cannot be built here (no container engine), so the
// layout it declares is read from its text.
func TestLayoutMatchesDockerfile(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ort := filepath.Join(repo, ".cache/onnxruntime/1.24.1/libonnxruntime.so.1")
	if _, err := os.Stat(ort); err != nil {
		t.Skipf("no ONNX Runtime at %s: run make ort (the runtime image carries it)", ort)
	}
	df, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	want := dockerfileLayout(t, string(df), repo)

	bin := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", bin+"/", "./cmd/pilotlight", "./cmd/pilotlight-runtime")
	build.Dir, build.Env = repo, append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	rt, err := runtimeImage(filepath.Join(bin, "pilotlight-runtime"), ort, filepath.Join(repo, "functions"))
	if err != nil {
		t.Fatal(err)
	}
	router, err := routerImage(filepath.Join(bin, "pilotlight"), filepath.Join(repo, "functions"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, img := range []v1.Image{rt, router} {
		for _, f := range imageFiles(t, img) {
			// The base: the user files and the libraries ldd named.
			if strings.HasPrefix(f, "/usr/local/") || strings.HasPrefix(f, "/functions/") {
				got[f] = true
			}
		}
	}
	var missing, extra []string
	for f := range want {
		if !got[f] {
			missing = append(missing, f)
		}
	}
	for f := range got {
		if !want[f] {
			extra = append(extra, f)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("make images differs from the Dockerfile's layout:\n  only in the Dockerfile: %v\n  only in make images: %v", missing, extra)
	}
	if len(want) < 5 {
		t.Fatalf("the Dockerfile declares only %v: is the parse still right?", want)
	}
	t.Logf("%d files in both layouts", len(want))

	// The runtime image's config is the Dockerfile's: user, port, entrypoint.
	cf, err := rt.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if u := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(string(df), -1); len(u) == 0 || cf.Config.User != u[len(u)-1][1] {
		t.Errorf("runtime image user %q; the Dockerfile's USER %v", cf.Config.User, u)
	}
	if _, ok := cf.Config.ExposedPorts["8080/tcp"]; !ok || !strings.Contains(string(df), "\nEXPOSE 8080\n") {
		t.Errorf("runtime image exposes %v; the Dockerfile EXPOSE 8080", cf.Config.ExposedPorts)
	}
	if len(cf.Config.Entrypoint) != 1 || path.Base(cf.Config.Entrypoint[0]) != "pilotlight-runtime" || !strings.Contains(string(df), `ENTRYPOINT ["pilotlight-runtime"]`) {
		t.Errorf("runtime image entrypoint %v; the Dockerfile's is pilotlight-runtime", cf.Config.Entrypoint)
	}
}

// dockerfileLayout reads the final stage's COPY lines: a file copied to a
// file path is that path; /out/functions copied to /functions is every
// file under functions/ that the build stage's `find` selects.
func dockerfileLayout(t *testing.T, df, repo string) map[string]bool {
	t.Helper()
	stages := strings.Split(df, "\nFROM ")
	final := stages[len(stages)-1]
	var names []string
	for _, m := range regexp.MustCompile(`-name '?([^'\s)]+)'?`).FindAllStringSubmatch(df, -1) {
		names = append(names, m[1])
	}
	if !slices.Contains(names, "function.yaml") {
		t.Fatalf("the Dockerfile's find selects %v: no function.yaml; is the parse still right?", names)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^COPY --from=\S+ (\S+) (\S+)$`).FindAllStringSubmatch(final, -1) {
		src, dst := m[1], m[2]
		if src != "/out/functions" {
			out[dst] = true
			continue
		}
		err := filepath.WalkDir(filepath.Join(repo, "functions"), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			for _, n := range names {
				if ok, _ := path.Match(n, d.Name()); ok {
					rel, _ := filepath.Rel(filepath.Join(repo, "functions"), p)
					out[path.Join(dst, filepath.ToSlash(rel))] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// imageFiles lists an image's regular files, as absolute paths.
func imageFiles(t *testing.T, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				out = append(out, "/"+strings.TrimPrefix(h.Name, "/"))
			}
		}
		rc.Close()
	}
	return out
}
