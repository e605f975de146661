// Compiles regular expressions with Go's own regexp package, the one
// kube-apiserver uses for CRD `pattern`s: reads a JSON array of patterns on
// standard input and prints a JSON array with, for each, Go's error or null.
// Standard library only; tests/suite/crds.rs runs it with `go run`.
package main

import (
	"encoding/json"
	"os"
	"regexp"
)

func main() {
	var patterns []string
	if err := json.NewDecoder(os.Stdin).Decode(&patterns); err != nil {
		os.Stderr.WriteString("input is not a JSON array of strings: " + err.Error() + "\n")
		os.Exit(2)
	}
	results := make([]*string, len(patterns))
	for i, pattern := range patterns {
		if _, err := regexp.Compile(pattern); err != nil {
			message := err.Error()
			results[i] = &message
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		os.Exit(1)
	}
}
