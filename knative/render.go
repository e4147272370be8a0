package knative

import (
	"encoding/json"
	"fmt"

	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// Render writes a Service as YAML for config/knative: keys sorted, no status
// and no null creationTimestamps, so the same inputs give the same bytes.
// header (may be empty) becomes leading comment lines.
func Render(svc *servingv1.Service, header string) ([]byte, error) {
	raw, err := json.Marshal(svc)
	if err != nil {
		return nil, fmt.Errorf("render service %s: %w", svc.Name, err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("render service %s: %w", svc.Name, err)
	}
	delete(obj, "status")
	dropNull(obj, "metadata", "creationTimestamp")
	if spec, ok := obj["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			dropNull(tmpl, "metadata", "creationTimestamp")
		}
	}
	dropZeroProbePorts(obj)
	out, err := yaml.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("render service %s: %w", svc.Name, err)
	}
	if header != "" {
		out = append([]byte(header), out...)
	}
	return out, nil
}

func dropNull(obj map[string]any, field, key string) {
	if m, ok := obj[field].(map[string]any); ok && m[key] == nil {
		delete(m, key)
	}
}

// dropZeroProbePorts removes "port: 0" from probe handlers: Go's zero
// IntOrString marshals as 0, and for Knative an absent port means "the
// container's port", which is what this package means by leaving it unset.
func dropZeroProbePorts(v any) {
	switch n := v.(type) {
	case map[string]any:
		for k, child := range n {
			if k == "httpGet" || k == "tcpSocket" || k == "grpc" {
				if h, ok := child.(map[string]any); ok {
					if p, ok := h["port"].(float64); ok && p == 0 {
						delete(h, "port")
					}
				}
			}
			dropZeroProbePorts(child)
		}
	case []any:
		for _, child := range n {
			dropZeroProbePorts(child)
		}
	}
}
