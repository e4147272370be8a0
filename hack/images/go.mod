// A nested module: `make images` builds the OCI images without a container
// engine, with go-containerregistry as ko does. Its dependencies never enter
// the main module's go.mod.
module github.com/pilotlight/pilotlight/hack/images

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	golang.org/x/sync v0.22.0 // indirect
)
