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
