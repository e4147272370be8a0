package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"

	"github.com/pilotlight/pilotlight/internal/listener"
)

// fold copies a child's output into the platform log, labelled with the
// function and revision it is about, once: the line's own (a shared
// process names the revision each line is about), else those the process
// serves (none for a warm-pool or a shared process's lines about itself);
// the first listening line gives its address.
func (e *Engine) fold(in *Process, r io.Reader, addrc chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if addrc != nil && strings.HasPrefix(line, listener.ReadyPrefix) {
			addrc <- strings.TrimSpace(strings.TrimPrefix(line, listener.ReadyPrefix))
			addrc = nil
			continue
		}
		target := in
		in.mu.Lock()
		if in.adoptedBy != nil {
			target = in.adoptedBy
		}
		in.mu.Unlock()
		l := target.labels.Load()
		fn, rev := "", ""
		if l != nil {
			fn, rev = l[0], l[1]
		}
		level, msg, attrs, own := parseRecord(line)
		if own[0] != "" || own[1] != "" {
			fn, rev = own[0], own[1]
		}
		if level >= slog.LevelWarn || strings.HasPrefix(line, "Error:") {
			words := msg
			for _, a := range attrs {
				if a.Key == "err" {
					words += ": " + a.Value.String()
				}
			}
			in.lastWords.Store(&words)
		}
		if fn != "" || rev != "" {
			attrs = append(attrs, slog.String("function", fn), slog.String("revision", rev))
		}
		attrs = append(attrs, slog.Int("pid", in.pid))
		e.log.LogAttrs(context.Background(), level, msg, attrs...)
	}
	// A line too long for the scanner ends the loop: keep reading, so the
	// child never blocks on a full pipe and its exit is still seen.
	_, _ = io.Copy(io.Discard, r)
}

// parseRecord reads one JSON log record of a child (PILOTLIGHT_LOG_FORMAT=json),
// with the function and revision it names apart; anything else (ONNX
// Runtime's own prints) is passed on as a plain message.
func parseRecord(line string) (level slog.Level, msg string, attrs []slog.Attr, fnRev [2]string) {
	var rec map[string]any
	if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &rec) != nil {
		return slog.LevelInfo, strings.TrimSpace(line), []slog.Attr{slog.String("source", "instance")}, fnRev
	}
	if s, ok := rec["level"].(string); ok {
		_ = level.UnmarshalText([]byte(s))
	}
	msg, _ = rec["msg"].(string)
	fnRev[0], _ = rec["function"].(string)
	fnRev[1], _ = rec["revision"].(string)
	attrs = []slog.Attr{slog.String("source", "instance")}
	for k, v := range rec {
		switch k {
		case "time", "level", "msg", "function", "revision":
			continue
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	return level, msg, attrs, fnRev
}
