// Package inference is the Open Inference Protocol's gRPC service
// (inference.GRPCInferenceService) as Go types: the messages and the client
// and server stubs generated from open_inference_grpc.proto. Instances serve
// it beside the V2 REST endpoints on one port; the router proxies it; tests
// and the bench call it as any KServe or Triton client would.
//
// open_inference_grpc.proto is copied unchanged from the specification,
// github.com/kserve/open-inference-protocol (specification/protocol/,
// commit d49cc23f89d709d87b210ef9449e273ae243984e), Copyright 2023 The KServe
// Authors, under the Apache License 2.0 (see NOTICE beside it). The *.pb.go
// files are generated from it by `make proto` (hack/proto-gen.sh) and checked
// by `make test` (hack/proto-check.sh); never edit them by hand.
package inference
