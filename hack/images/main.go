// Command images builds Pilotlight's OCI images without a container engine,
// with go-containerregistry as ko does, and writes them into one OCI image
// layout (and a tar of it that `ctr -n k8s.io images import` loads).
//
// The runtime image is the Dockerfile's layout without its base image and
// without the platform CLI beside the runtime: the lean runtime binary
// (cmd/pilotlight-runtime, the entrypoint), the glibc and libstdc++ it and ONNX Runtime link
// (found with ldd on this machine, Debian's), ONNX Runtime's library from
// the npm package, a non-root user, and the functions' models as a layer of
// their own, last, so a new model does not change the layers below it. The
// router image is the platform binary on the same base, with the same
// functions layer (serve --functions=/functions reads the manifests; the
// layer is the runtime image's, so a node stores it once). Static binaries
// (Knative's components, the pod sandbox's pause) go on an empty base with
// the same user, as ko's default static base.
//
// Every file's time is the Unix epoch and every layer is built from sorted
// paths, so the same inputs give the same digests.
//
//	go run . -out DIR -image name=spec ...
//
// A spec is one of
//
//	runtime:BIN:ORT:FUNCTIONS   the runtime image
//	router:BIN:FUNCTIONS        the router image (the platform binary, the functions)
//	static:BIN:ENTRYPOINT_PATH  a static binary as its entrypoint
//
// It prints "name@sha256:..." for each image and writes the same lines to
// DIR/digests.txt.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// nonRoot is distroless's nonroot user, which the Dockerfile and the
// Knative manifests run as.
const nonRoot = 65532

type imageFlags []string

func (f *imageFlags) String() string     { return strings.Join(*f, " ") }
func (f *imageFlags) Set(s string) error { *f = append(*f, s); return nil }

func main() {
	out := flag.String("out", ".cache/images", "the OCI image layout to write (replaced)")
	var specs imageFlags
	flag.Var(&specs, "image", "name=spec (repeatable; see the package doc)")
	flag.Parse()
	if err := run(*out, specs); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(out string, specs []string) error {
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	var lines []string
	for _, s := range specs {
		ref, spec, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("-image %q: want name=spec", s)
		}
		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image name %q: %w", ref, err)
		}
		img, err := build(spec)
		if err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		dg, err := img.Digest()
		if err != nil {
			return err
		}
		byDigest := tag.Context().Digest(dg.String()).String()
		// Two names for one manifest: the tag a person types and the
		// digest the manifests use. containerd's CRI finds an image only
		// by a name it holds, so both are imported.
		for _, n := range []string{tag.String(), byDigest} {
			if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
				"io.containerd.image.name":          n,
				"org.opencontainers.image.ref.name": n,
			})); err != nil {
				return err
			}
		}
		lines = append(lines, byDigest)
		fmt.Println(byDigest)
	}
	if err := os.WriteFile(filepath.Join(out, "digests.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return tarDir(out, out+".tar")
}

func build(spec string) (v1.Image, error) {
	kind, rest, _ := strings.Cut(spec, ":")
	args := strings.Split(rest, ":")
	switch {
	case kind == "runtime" && len(args) == 3:
		return runtimeImage(args[0], args[1], args[2])
	case kind == "router" && len(args) == 2:
		return routerImage(args[0], args[1])
	case kind == "static" && len(args) == 2:
		return staticImage(args[0], args[1])
	}
	return nil, fmt.Errorf("spec %q: want runtime:BIN:ORT:FUNCTIONS, router:BIN:FUNCTIONS or static:BIN:PATH", spec)
}

// Where the Dockerfile puts things.
const (
	runtimePath  = "/usr/local/bin/pilotlight-runtime"
	binPath      = "/usr/local/bin/pilotlight"
	ortPath      = "/usr/local/lib/pilotlight/libonnxruntime.so.1"
	functionsDir = "/functions"
)

func runtimeImage(bin, ort, functions string) (v1.Image, error) {
	base, err := baseLayer(bin, ort)
	if err != nil {
		return nil, err
	}
	ortLayer, err := fileLayer(map[string]file{ortPath: {src: ort, mode: 0o644}})
	if err != nil {
		return nil, err
	}
	binLayer, err := fileLayer(map[string]file{runtimePath: {src: bin, mode: 0o755}})
	if err != nil {
		return nil, err
	}
	models, err := functionsLayer(functions)
	if err != nil {
		return nil, err
	}
	return image([]v1.Layer{base, ortLayer, binLayer, models}, v1.Config{
		Entrypoint:   []string{runtimePath},
		Cmd:          []string{"--function", functionsDir + "/fraud"},
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "ONNXRUNTIME_LIB=" + ortPath},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	})
}

func routerImage(bin, functions string) (v1.Image, error) {
	base, err := baseLayer(bin)
	if err != nil {
		return nil, err
	}
	binLayer, err := fileLayer(map[string]file{binPath: {src: bin, mode: 0o755}})
	if err != nil {
		return nil, err
	}
	fns, err := functionsLayer(functions)
	if err != nil {
		return nil, err
	}
	return image([]v1.Layer{base, binLayer, fns}, v1.Config{
		Entrypoint: []string{binPath},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
	})
}

func staticImage(bin, at string) (v1.Image, error) {
	base, err := fileLayer(userFiles())
	if err != nil {
		return nil, err
	}
	binLayer, err := fileLayer(map[string]file{at: {src: bin, mode: 0o755}})
	if err != nil {
		return nil, err
	}
	return image([]v1.Layer{base, binLayer}, v1.Config{Entrypoint: []string{at}, Env: []string{"PATH=/ko-app:/usr/local/bin:/usr/bin:/bin"}})
}

func image(layers []v1.Layer, cfg v1.Config) (v1.Image, error) {
	cfg.User = fmt.Sprintf("%d:%d", nonRoot, nonRoot)
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// file is one file of a layer: its bytes from src, or data when src is "".
type file struct {
	src  string
	data []byte
	mode int64
	dir  bool
}

func userFiles() map[string]file {
	return map[string]file{
		"/etc/passwd":   {data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonRoot, nonRoot), mode: 0o644},
		"/etc/group":    {data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonRoot), mode: 0o644},
		"/tmp":          {dir: true, mode: 0o1777},
		"/home/nonroot": {dir: true, mode: 0o755},
	}
}

// baseLayer holds the user and the shared libraries the given ELF files
// link, as this machine's dynamic loader resolves them (ldd), with the
// loader itself.
func baseLayer(elves ...string) (v1.Layer, error) {
	files := userFiles()
	re := regexp.MustCompile(`(?:=>\s+)?(/\S+)\s+\(0x`)
	for _, e := range elves {
		out, err := exec.Command("ldd", e).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", e, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			m := re.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			lib := m[1]
			if strings.Contains(lib, "libonnxruntime") {
				continue // its own layer
			}
			files[lib] = file{src: lib, mode: 0o755}
		}
	}
	if _, ok := files["/lib64/ld-linux-x86-64.so.2"]; !ok {
		return nil, errors.New("ldd named no /lib64/ld-linux-x86-64.so.2: is the binary dynamic?")
	}
	return fileLayer(files)
}

// functionsLayer holds what a function needs at run time, as the
// Dockerfile copies it: function.yaml, models, notices.
func functionsLayer(dir string) (v1.Layer, error) {
	files := map[string]file{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		base := d.Name()
		// The Dockerfile's selection (its `find functions ...`): manifests,
		// models, notices, warm-up requests. main_test.go compares the two.
		warmup, _ := path.Match("warmup*.json", base)
		if base == "function.yaml" || base == "NOTICE" || strings.HasSuffix(base, ".onnx") || warmup {
			rel, _ := filepath.Rel(dir, p)
			files[path.Join(functionsDir, filepath.ToSlash(rel))] = file{src: p, mode: 0o644}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(slices.Collect(mapKeys(files)), func(s string) bool { return strings.HasSuffix(s, ".onnx") }) {
		return nil, fmt.Errorf("no models under %s: run make models", dir)
	}
	return fileLayer(files)
}

func mapKeys(m map[string]file) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// fileLayer writes a reproducible tar (sorted, parent directories first,
// epoch times, root-owned) and makes a gzip layer of it.
func fileLayer(files map[string]file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	paths := slices.Sorted(mapKeys(files))
	dirs := map[string]bool{}
	epoch := time.Unix(0, 0)
	for _, p := range paths {
		f := files[p]
		rel := strings.TrimPrefix(p, "/")
		parts := strings.Split(rel, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		if f.dir {
			dirs[rel+"/"] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		data := f.data
		if f.src != "" {
			b, err := os.ReadFile(f.src)
			if err != nil {
				return nil, err
			}
			data = b
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: f.mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// tarDir writes the layout as a tar for `ctr images import`.
func tarDir(dir, dst string) error {
	f, err := os.Create(dst + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || rel == "digests.txt" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}
