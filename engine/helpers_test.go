package engine_test

import (
	"os"
	"strconv"
)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }
func itoa(i int) string                 { return strconv.Itoa(i) }

func testLogOut() *os.File {
	if os.Getenv("ENGINE_TEST_LOG") != "" {
		return os.Stderr
	}
	f, _ := os.Open(os.DevNull)
	return f
}
