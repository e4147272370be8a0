package flags

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

var simpleKey = func(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if !(r == '-' || r == '_' || r == '$' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func pathKey(base, k string) string {
	if simpleKey(k) {
		return base + "." + k
	}
	return base + "[" + strconv.Quote(k) + "]"
}

func pathIndex(base string, i int) string { return base + "[" + strconv.Itoa(i) + "]" }

// jsonErrorAt turns a decoding error into a message with line and column.
func jsonErrorAt(raw []byte, err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := lineCol(raw, se.Offset)
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, se.Offset, se.Error())
	case errors.As(err, &te):
		line, col := lineCol(raw, te.Offset)
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, te.Offset, te.Error())
	case errors.Is(err, io.EOF):
		return "empty file: expected a JSON object"
	default:
		line, col := lineCol(raw, int64(len(raw)))
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, len(raw), err.Error())
	}
}

func lineCol(raw []byte, off int64) (line, col int) {
	if off > int64(len(raw)) {
		off = int64(len(raw))
	}
	if off < 0 {
		off = 0
	}
	before := raw[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
