package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/open-feature/go-sdk/openfeature"
	"github.com/open-feature/go-sdk/openfeature/isolated"
	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/flags"
)

// newFlagsCmd is `pilotlight flags`: evaluate and validate flagd-format flag
// files offline, exactly as the router evaluates them.
func newFlagsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "flags",
		Short: "Evaluate and validate flag files (flagd format)",
	}
	cmd.AddCommand(newFlagsEvalCmd(), newFlagsValidateCmd())
	return cmd
}

func newFlagsEvalCmd() *cobra.Command {
	var file, key, typ, def, evalCtx, targetingKey string
	cmd := &cobra.Command{
		Use:   "eval --file F --flag KEY [--type string|boolean|integer|float|object] [--default V] [--context JSON]",
		Short: "Evaluate one flag for a context and print the result as one JSON object",
		Long: `Evaluate one flag through the OpenFeature SDK with the router's provider and
print {"value", "variant", "reason", "errorCode", "errorMessage", "metadata"}.
A failed evaluation (unknown flag, type mismatch, a flag file with problems)
is a result, printed with exit status 0; only a misused command fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			attrs := map[string]any{}
			if evalCtx != "" {
				dec := json.NewDecoder(bytes.NewReader([]byte(evalCtx)))
				if err := dec.Decode(&attrs); err != nil {
					return fmt.Errorf("--context must be a JSON object: %w", err)
				}
				if dec.More() {
					return errors.New("--context must be one JSON object")
				}
			}
			if tk, ok := attrs[openfeature.TargetingKey]; ok && targetingKey == "" {
				s, isStr := tk.(string)
				if !isStr {
					return fmt.Errorf("--context: targetingKey must be a string, not %v", tk)
				}
				targetingKey = s
			}
			delete(attrs, openfeature.TargetingKey)

			raw, err := readFlagFile(file)
			if err != nil {
				return err
			}
			set, parseErr := flags.Parse(raw)
			if typ == "" {
				typ = inferType(set, key)
			}
			defVal, err := parseDefault(typ, def)
			if err != nil {
				return err
			}
			var out evalOutput
			if parseErr != nil {
				// flagd answers PARSE_ERROR for a flag it cannot use; so do we.
				code := string(openfeature.ParseErrorCode)
				out = evalOutput{Value: defVal, Reason: string(openfeature.ErrorReason),
					ErrorCode: &code, ErrorMessage: parseErr.Error()}
			} else {
				out, err = evaluate(cmd.Context(), set, key, typ, defVal, openfeature.NewEvaluationContext(targetingKey, attrs))
				if err != nil {
					return err
				}
			}
			return writeJSON(cmd.OutOrStdout(), out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", "flag file (flagd JSON format; - reads standard input)")
	f.StringVar(&key, "flag", "", "flag key, e.g. fraud-revision")
	f.StringVar(&typ, "type", "", "requested type: string, boolean, integer, float or object (default: the flag's variant type)")
	f.StringVar(&def, "default", "", "the caller's default value, in the requested type (default: its zero value)")
	f.StringVar(&evalCtx, "context", "", `evaluation context as a JSON object, e.g. {"targetingKey": "user-1", "email": "ada@pilotlight.dev"}`)
	f.StringVar(&targetingKey, "targeting-key", "", "targeting key (overrides the context's targetingKey)")
	_ = cmd.MarkFlagRequired("file")
	_ = cmd.MarkFlagRequired("flag")
	return cmd
}

func newFlagsValidateCmd() *cobra.Command {
	var strict bool
	cmd := &cobra.Command{
		Use:   "validate FILE",
		Short: "Report every problem in a flag file with its JSON path; exit 1 on errors (or on warnings with --strict)",
		Long: `Report every problem in a flag file with its JSON path, one per line.

Errors are what flagd refuses to load (malformed JSON, a field of the wrong
JSON type, a defaultVariant that is not a variant, an empty evaluator): the
router refuses such a file and keeps its last good flags. Warnings are what
flagd loads and evaluates by its own rules (an operator given the wrong
arguments yields null, so the default variant; a negative fractional weight
counts as 0; a $ref to a missing evaluator makes that flag a PARSE_ERROR):
the router serves such a file and logs each warning once per file version.
Exit status 1 on any error, or on any warning with --strict.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readFlagFile(args[0])
			if err != nil {
				return err
			}
			problems := flags.Validate(raw)
			w := cmd.OutOrStdout()
			errs := len(flags.Errors(problems))
			warnings := len(problems) - errs
			for _, p := range problems {
				fmt.Fprintln(w, p.String())
			}
			if errs == 0 && (warnings == 0 || !strict) {
				if warnings == 0 {
					fmt.Fprintln(w, "ok")
				} else {
					fmt.Fprintf(w, "ok: %d warning(s); flagd and Pilotlight load this file (--strict refuses it)\n", warnings)
				}
				return nil
			}
			cmd.SilenceErrors = true
			cmd.SilenceUsage = true
			if errs == 0 {
				return fmt.Errorf("%s: %d warning(s), refused by --strict", args[0], warnings)
			}
			return fmt.Errorf("%s: %d error(s), %d warning(s)", args[0], errs, warnings)
		},
	}
	cmd.Flags().BoolVar(&strict, "strict", false, "treat warnings as errors")
	return cmd
}

type evalOutput struct {
	Value        any            `json:"value"`
	Variant      *string        `json:"variant"`
	Reason       string         `json:"reason"`
	ErrorCode    *string        `json:"errorCode"`
	ErrorMessage string         `json:"errorMessage,omitempty"`
	Metadata     map[string]any `json:"metadata"`
}

func (o evalOutput) MarshalJSON() ([]byte, error) {
	type plain evalOutput
	if o.Metadata == nil {
		o.Metadata = map[string]any{}
	}
	return json.Marshal(plain(o))
}

// evaluate runs one evaluation through an OpenFeature client of its own.
func evaluate(ctx context.Context, set *flags.Set, key, typ string, def any, ec openfeature.EvaluationContext) (evalOutput, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	api := isolated.NewAPI()
	setCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := api.SetProviderAndWait(setCtx, flags.NewProvider(set)); err != nil {
		return evalOutput{}, fmt.Errorf("start flag provider: %w", err)
	}
	defer func() { _ = api.Shutdown(context.Background()) }()
	c := api.NewClient()

	var value any
	var d openfeature.EvaluationDetails
	switch typ {
	case "string":
		r, _ := c.StringValueDetails(ctx, key, def.(string), ec)
		value, d = r.Value, r.EvaluationDetails
	case "boolean":
		r, _ := c.BooleanValueDetails(ctx, key, def.(bool), ec)
		value, d = r.Value, r.EvaluationDetails
	case "integer":
		r, _ := c.IntValueDetails(ctx, key, def.(int64), ec)
		value, d = r.Value, r.EvaluationDetails
	case "float":
		r, _ := c.FloatValueDetails(ctx, key, def.(float64), ec)
		value, d = r.Value, r.EvaluationDetails
	default:
		r, _ := c.ObjectValueDetails(ctx, key, def, ec)
		value, d = r.Value, r.EvaluationDetails
	}
	out := evalOutput{Value: value, Reason: string(d.Reason), ErrorMessage: d.ErrorMessage, Metadata: map[string]any(d.FlagMetadata)}
	if d.Variant != "" {
		out.Variant = &d.Variant
	}
	if d.ErrorCode != "" {
		code := string(d.ErrorCode)
		out.ErrorCode = &code
	}
	return out, nil
}

// inferType is the flag's variant type when --type is not given.
func inferType(set *flags.Set, key string) string {
	if set == nil {
		return "string"
	}
	f, ok := set.Flag(key)
	if !ok {
		return "string"
	}
	typ := ""
	for _, v := range f.Variants {
		switch x := v.(type) {
		case bool:
			return "boolean"
		case string:
			return "string"
		case map[string]any:
			return "object"
		case float64:
			if _, whole := flags.AsInt(x); !whole {
				return "float"
			}
			typ = "integer"
		}
	}
	if typ == "" {
		return "string"
	}
	return typ
}

func parseDefault(typ, s string) (any, error) {
	switch typ {
	case "string":
		return s, nil
	case "boolean":
		if s == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("--default %q is not a boolean", s)
		}
		return b, nil
	case "integer":
		if s == "" {
			return int64(0), nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--default %q is not an integer", s)
		}
		return n, nil
	case "float":
		if s == "" {
			return float64(0), nil
		}
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("--default %q is not a number", s)
		}
		return n, nil
	case "object":
		if s == "" {
			return nil, nil
		}
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("--default for an object must be JSON: %w", err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("--type %q: want string, boolean, integer, float or object", typ)
}

func readFlagFile(path string) ([]byte, error) {
	if path == "-" {
		raw, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("read flag file from standard input: %w", err)
		}
		return raw, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read flag file: %w", err)
	}
	return raw, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}
