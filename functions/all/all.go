// Package all registers every built-in function handler; anything that
// parses function.yaml files imports it for its side effect.
package all

import (
	_ "github.com/pilotlight/pilotlight/functions/fraud"     // handler "fraud"
	_ "github.com/pilotlight/pilotlight/functions/recommend" // handler "recommend"
)
