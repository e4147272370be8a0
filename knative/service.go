// Package knative is the cluster backend: on many machines Knative Serving is
// the distributed engine, and this package turns a function.yaml into the
// Knative Service that runs it (one Knative revision per function revision,
// traffic tags and percents from the function's flag), deploys it the way kn
// does, and resolves a function revision to the tag URL the router proxies to.
// Pilotlight grows no scheduler of its own: Knative's autoscaler, activator and
// revisions do that work in a cluster, as the local engine does on one machine.
package knative

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/internal/listener"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/pilotlight/pilotlight/functions"
)

// Defaults for Options' omitted fields.
const (
	// DefaultImage is the runtime image the generated manifests name; releases
	// override it with --image (a digest is best: Knative resolves tags anyway).
	DefaultImage = "ghcr.io/pilotlight/pilotlight:0.1.0"
	// DefaultNamespace is where functions, the router and the policies live.
	DefaultNamespace = "pilotlight"
	// FunctionsDir is where the image bakes function directories in.
	FunctionsDir = "/functions"
	// ORTLibrary is where the image puts ONNX Runtime's shared library.
	ORTLibrary = "/usr/local/lib/pilotlight/libonnxruntime.so.1"
	// ContainerPort is the runtime's port: Knative's $PORT default.
	ContainerPort = 8080
	// NonRootUID is the distroless "nonroot" user the image runs as.
	NonRootUID = 65532
	// GPUResource is the extended resource a cuda function asks for.
	GPUResource corev1.ResourceName = "nvidia.com/gpu"
)

// Sizing of an instance. A session runs IntraOpThreads threads and at most
// Sessions of them run at once, so an instance can use Sessions×IntraOpThreads
// cores; it is guaranteed half of that and capped at all of it.
const (
	milliCPUPerThread   = 1000
	baseMemoryBytes     = 256 << 20 // Go runtime, ONNX Runtime, echo
	memoryPerSessionRAM = 128 << 20 // one session: model weights and arenas
	memoryLimitFactor   = 2
	goMemLimitPercent   = 90 // GOMEMLIMIT as a share of the memory limit
)

// Labels put on every generated object and pod; config/security selects on them.
const (
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelComponent = "app.kubernetes.io/component"
	LabelName      = "app.kubernetes.io/name"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelFunction  = "pilotlight.dev/function"
	LabelRevision  = "pilotlight.dev/revision"

	PartOf = "pilotlight"
	// VisibilityLabel set to cluster-local keeps a Knative Service off the
	// external ingress (knative.dev/networking's VisibilityLabelKey).
	VisibilityLabel        = "networking.knative.dev/visibility"
	VisibilityClusterLocal = "cluster-local"
	ComponentFunction      = "function"
)

// Options says where and how a function is deployed.
type Options struct {
	// Image is the runtime image (default DefaultImage).
	Image string
	// Namespace for the Service (default DefaultNamespace).
	Namespace string
	// Revision is the revision whose template the Service carries (default
	// the newest, the last one in function.yaml). Revisions listed after it
	// are left out: they do not exist in the cluster yet.
	Revision string
	// Traffic is the percent split over revisions (see SplitFromFlags); nil
	// sends 100% to Revision.
	Traffic flags.Split
	// Public exposes the Service on the cluster's external domain. By default
	// it is cluster-local: clients go through the router, which reaches the
	// revisions' tag URLs inside the cluster.
	Public bool
}

func (o Options) withDefaults(m *functions.Manifest) Options {
	if o.Image == "" {
		o.Image = DefaultImage
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Revision == "" && len(m.Revisions) > 0 {
		o.Revision = m.Revisions[len(m.Revisions)-1].Name
	}
	return o
}

// Service builds the Knative Service for one function: its template is
// opts.Revision (named after it, so Knative creates exactly that revision) and
// its traffic block names every earlier revision that carries a tag or a share
// of traffic. Knative holds one template per Service, so the earlier revisions
// must already exist in the cluster; Deployer creates them in order.
func Service(m *functions.Manifest, opts Options) (*servingv1.Service, error) {
	if m == nil {
		return nil, fmt.Errorf("knative service: nil manifest")
	}
	opts = opts.withDefaults(m)
	idx := slices.IndexFunc(m.Revisions, func(r functions.Revision) bool { return r.Name == opts.Revision })
	if idx < 0 {
		return nil, fmt.Errorf("function %s: no revision %q (have %v)", m.Name, opts.Revision, functions.RevisionNames(m.Revisions))
	}
	rev := m.Revisions[idx]
	available := m.Revisions[:idx+1]
	traffic, err := trafficTargets(m.Name, available, opts.Traffic, rev.Name)
	if err != nil {
		return nil, err
	}

	labels := map[string]string{
		LabelName:      m.Name,
		LabelPartOf:    PartOf,
		LabelComponent: ComponentFunction,
		LabelManagedBy: "pilotlight",
	}
	if !opts.Public {
		labels[VisibilityLabel] = VisibilityClusterLocal
	}
	podLabels := maps.Clone(labels)
	delete(podLabels, VisibilityLabel)
	delete(podLabels, LabelManagedBy)
	podLabels[LabelFunction] = m.Name
	podLabels[LabelRevision] = rev.Name

	cc := int64(m.Scaling.ContainerConcurrency)
	svc := &servingv1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: servingv1.SchemeGroupVersion.String(), Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      m.Name,
			Namespace: opts.Namespace,
			Labels:    labels,
		},
		Spec: servingv1.ServiceSpec{
			ConfigurationSpec: servingv1.ConfigurationSpec{
				Template: servingv1.RevisionTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{
						Name:        rev.Name,
						Labels:      podLabels,
						Annotations: scalingAnnotations(m.Scaling),
					},
					Spec: servingv1.RevisionSpec{
						PodSpec: corev1.PodSpec{
							AutomountServiceAccountToken: ptr(false),
							EnableServiceLinks:           ptr(false),
							Containers:                   []corev1.Container{container(m, rev, opts.Image)},
						},
						ContainerConcurrency: &cc,
					},
				},
			},
			RouteSpec: servingv1.RouteSpec{Traffic: traffic},
		},
	}
	return svc, nil
}

func container(m *functions.Manifest, rev functions.Revision, image string) corev1.Container {
	threads := int64(m.Runtime.Sessions * m.Runtime.IntraOpThreads)
	cpuLimit := resource.NewMilliQuantity(threads*milliCPUPerThread, resource.DecimalSI)
	cpuRequest := resource.NewMilliQuantity(max(threads*milliCPUPerThread/2, 100), resource.DecimalSI)
	memRequestBytes := int64(baseMemoryBytes + m.Runtime.Sessions*memoryPerSessionRAM)
	memLimitBytes := memRequestBytes * memoryLimitFactor
	limits := corev1.ResourceList{
		corev1.ResourceCPU:    *cpuLimit,
		corev1.ResourceMemory: *resource.NewQuantity(memLimitBytes, resource.BinarySI),
	}
	if m.Runtime.Provider == "cuda" {
		limits[GPUResource] = resource.MustParse("1")
	}
	return corev1.Container{
		Name:    "runtime",
		Image:   image,
		Command: []string{listener.RuntimeBinary},
		Args: []string{"--function", FunctionsDir + "/" + m.Name,
			"--revision", rev.Name},
		// "h2c": Knative carries HTTP/2 end to end, so gRPC reaches the runtime; REST works over it too (the runtime takes both on $PORT).
		Ports: []corev1.ContainerPort{{Name: "h2c", ContainerPort: ContainerPort, Protocol: corev1.ProtocolTCP}},
		Env: []corev1.EnvVar{
			{Name: "ONNXRUNTIME_LIB", Value: ORTLibrary},
			// The Go runtime does not read cgroup limits for memory: say it.
			{Name: "GOMEMLIMIT", Value: strconv.FormatInt(memLimitBytes*goMemLimitPercent/100, 10)},
			{Name: "GOMAXPROCS", Value: strconv.FormatInt(max(threads, 1), 10)},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    *cpuRequest,
				corev1.ResourceMemory: *resource.NewQuantity(memRequestBytes, resource.BinarySI),
			},
			Limits: limits,
		},
		// Ready only after sessions exist and a warm-up inference ran; the
		// port is left to Knative, which probes through the queue-proxy.
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/v2/health/ready"}},
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/v2/health/live"}},
			PeriodSeconds:    10,
			FailureThreshold: 3,
		},
		// Knative takes these at container level (the pod-level securityContext
		// is behind a feature flag); together they satisfy the restricted Pod
		// Security Standard.
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(NonRootUID)),
			RunAsGroup:               ptr(int64(NonRootUID)),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// scalingAnnotations maps function.yaml's scaling block onto Knative's KPA.
// initial-scale is written only when set: 0 needs the cluster-wide
// allow-zero-initial-scale, and Knative's default (1) is what an unset value means.
func scalingAnnotations(s functions.Scaling) map[string]string {
	a := map[string]string{
		autoscaling.ClassAnnotationKey:               autoscaling.KPA,
		autoscaling.MetricAnnotationKey:              autoscaling.Concurrency,
		autoscaling.TargetAnnotationKey:              strconv.Itoa(s.TargetConcurrency),
		autoscaling.MinScaleAnnotationKey:            strconv.Itoa(s.MinScale),
		autoscaling.MaxScaleAnnotationKey:            strconv.Itoa(s.MaxScale),
		autoscaling.ScaleToZeroPodRetentionPeriodKey: formatDuration(s.ScaleToZeroAfter),
	}
	if s.InitialScale > 0 {
		a[autoscaling.InitialScaleAnnotationKey] = strconv.Itoa(s.InitialScale)
	}
	return a
}

// formatDuration writes 30s rather than Go's 30s/1m0s mix: whole seconds when
// possible, Go's form otherwise (Knative parses both with time.ParseDuration).
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// trafficTargets builds the traffic block: one target per available revision
// that has a tag or a share, in function.yaml order, pinned by name
// (latestRevision false) so a new template never takes traffic by itself.
func trafficTargets(function string, available []functions.Revision, split flags.Split, template string) ([]servingv1.TrafficTarget, error) {
	if split == nil {
		split = flags.Split{template: 100}
	}
	if err := split.Check(); err != nil {
		return nil, fmt.Errorf("function %s: traffic: %w", function, err)
	}
	known := map[string]bool{}
	for _, r := range available {
		known[r.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(split)) {
		if !known[name] && split[name] > 0 {
			return nil, fmt.Errorf("function %s: traffic sends %d%% to revision %q, which is not among the revisions up to %s (%v)",
				function, split[name], name, template, functions.RevisionNames(available))
		}
	}
	var out []servingv1.TrafficTarget
	for _, r := range available {
		pct, inSplit := split[r.Name]
		if r.Tag == "" && pct == 0 {
			continue
		}
		t := servingv1.TrafficTarget{
			Tag:            r.Tag,
			RevisionName:   r.Name,
			LatestRevision: ptr(false),
			Percent:        ptr(pct),
		}
		if !inSplit {
			t.Percent = ptr(int64(0))
		}
		out = append(out, t)
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }
