package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/router/auth"
)

// newKeysCmd makes API keys for the router: `keys new` generates one and
// stores only its hash; `keys hash` hashes a key someone already holds.
func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Make API keys for the router (stored hashed: the key itself is shown once)",
	}
	cmd.AddCommand(newKeysNewCmd(), newKeysHashCmd())
	return cmd
}

// keyFlags are the entry fields both subcommands take.
type keyFlags struct {
	id        string
	functions []string
	admin     bool
	rps       float64
	burst     int
}

func (kf *keyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&kf.id, "id", "", "who holds the key (team-fraud); shows in logs and errors")
	f.StringSliceVar(&kf.functions, "functions", nil, `functions the key may call, comma-separated, or "*" for all`)
	f.BoolVar(&kf.admin, "admin", false, "the key may also call /admin/* and /metrics")
	f.Float64Var(&kf.rps, "rps", 0, "requests per second for this key (0: the router's default, 100)")
	f.IntVar(&kf.burst, "burst", 0, "token-bucket burst for this key (0: 2 x rps, or the router's default 200)")
}

// entry builds the key's entry and its YAML, validated exactly as the
// router will validate them when it loads the file.
func (kf *keyFlags) entry(hash string) (auth.Entry, string, error) {
	e := auth.Entry{ID: kf.id, Hash: hash, Functions: kf.functions, Admin: kf.admin}
	switch {
	case kf.rps < 0 || kf.burst < 0:
		return e, "", errors.New("--rps and --burst must not be negative")
	case kf.burst > 0 && kf.rps == 0:
		return e, "", errors.New("--burst needs --rps")
	case kf.rps > 0:
		e.Rate = &auth.Rate{RPS: kf.rps, Burst: kf.burst}
	}
	doc, err := auth.EntryYAML(e)
	if err != nil {
		return e, "", err
	}
	if _, err := auth.Parse([]byte("keys:\n"+indent(doc)), "the new key"); err != nil {
		return e, "", err
	}
	return e, doc, nil
}

func newKeysNewCmd() *cobra.Command {
	var (
		kf   keyFlags
		file string
	)
	cmd := &cobra.Command{
		Use:   "new --id ID (--functions a,b|* | --admin) [--rps N --burst N] [--file keys.yaml]",
		Short: "Generate a key, print it once on stdout, and append its hash to the keys file (created 0600)",
		Example: `  pilotlight keys new --id team-fraud --functions fraud --rps 100 --burst 200
  pilotlight keys new --id ops --admin --file /etc/pilotlight/keys.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kf.id == "" {
				return errors.New("--id is required")
			}
			key, err := auth.NewKey()
			if err != nil {
				return err
			}
			e, _, err := kf.entry(auth.Sum(key))
			if err != nil {
				return err
			}
			// The file first: a key is printed only once its hash is stored.
			if err := auth.AppendEntry(file, e); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "pilotlight: added key %q to %s; the key below is shown only this once, store it now\n", e.ID, file)
			fmt.Fprintln(cmd.OutOrStdout(), key)
			return nil
		},
	}
	kf.register(cmd)
	cmd.Flags().StringVar(&file, "file", "keys.yaml", "keys file to append to (YAML, or JSON if it ends in .json); created with mode 0600")
	return cmd
}

func newKeysHashCmd() *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "hash [--id ID --functions a,b|* --admin --rps N --burst N] < key",
		Short: `Read a key on stdin and print its hash ("sha256:..."), or with --id a whole entry to paste under "keys:"`,
		Example: `  printf %s "$KEY" | pilotlight keys hash
  printf %s "$KEY" | pilotlight keys hash --id team-fraud --functions fraud`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), auth.MaxKeyBytes+2)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read key from stdin: %w", err)
			}
			key := strings.TrimRight(line, "\r\n")
			if err := auth.CheckStrength(key); err != nil {
				return fmt.Errorf("key on stdin: %w", err)
			}
			hash := auth.Sum(key)
			if kf.id == "" {
				fmt.Fprintln(cmd.OutOrStdout(), hash)
				return nil
			}
			_, doc, err := kf.entry(hash)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), doc)
			return nil
		},
	}
	kf.register(cmd)
	return cmd
}

// indent shifts a YAML list item under a "keys:" line.
func indent(s string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "  " + l
		}
	}
	return strings.Join(lines, "")
}
