// Package ort is the runtime's only door to ONNX Runtime: it finds the shared
// library, initialises the process-wide environment once, creates sessions on
// the requested execution provider (falling back to CPU with a reason), and
// converts between tensor.Tensor and ONNX Runtime values.
package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	onnx "github.com/yalue/onnxruntime_go"
)

// Version is the ONNX Runtime release the Makefile fetches (npm onnxruntime-node).
const Version = "1.24.1"

// LibraryEnv overrides where the shared library is looked for.
const LibraryEnv = "ONNXRUNTIME_LIB"

// cacheRel is where `make ort` puts the library, relative to the repository root.
var cacheRel = filepath.Join(".cache", "onnxruntime", Version, "libonnxruntime.so.1")

// ErrLibraryMissing says the shared library could not be found; its message
// names the make target that fetches it.
var ErrLibraryMissing = errors.New("ONNX Runtime shared library not found: run `make ort` (fetches onnxruntime-node@" + Version + " with npm) or set " + LibraryEnv + " to libonnxruntime.so")

// FindLibrary locates libonnxruntime: $ONNXRUNTIME_LIB when set, else the
// repository cache searched upward from the working directory and from the
// executable (so bin/pilotlight and `go test` in any package both find it),
// else /usr/local/lib/pilotlight (the container image's location).
func FindLibrary() (string, error) {
	if p := os.Getenv(LibraryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w; %w", LibraryEnv, p, err, ErrLibraryMissing)
		}
		return p, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, cacheRel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if p := "/usr/local/lib/pilotlight/libonnxruntime.so.1"; fileExists(p) {
		return p, nil
	}
	return "", ErrLibraryMissing
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

var (
	initOnce sync.Once
	initErr  error
	initPath string
)

// Init finds the library and initialises the ONNX Runtime environment once per
// process. Later calls return the first call's result.
func Init() (string, error) {
	initOnce.Do(func() {
		initPath, initErr = FindLibrary()
		if initErr != nil {
			return
		}
		onnx.SetSharedLibraryPath(initPath)
		fixMmapThreshold()
		if err := onnx.InitializeEnvironment(onnx.WithLogLevelError()); err != nil {
			initErr = fmt.Errorf("initialise ONNX Runtime from %s: %w", initPath, err)
		}
	})
	return initPath, initErr
}

// RuntimeVersion is the version string the loaded library reports.
func RuntimeVersion() string {
	if !onnx.IsInitialized() {
		return ""
	}
	return onnx.GetVersion()
}
