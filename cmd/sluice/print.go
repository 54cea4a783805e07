package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/sluice-vpn/sluice/gateway"
)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// printDNSStats prints the proxy's statistics as indented "key: value"
// lines, in the order of its JSON form.
func printDNSStats(w io.Writer, st *gateway.Status) {
	data, err := json.Marshal(st.DNS)
	if err != nil {
		fmt.Fprintf(w, "  (unprintable: %v)\n", err)
		return
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		fmt.Fprintf(w, "  (unprintable: %v)\n", err)
		return
	}
	printTree(w, v, 1)
}

func printTree(w io.Writer, v any, depth int) {
	indent := strings.Repeat("  ", depth)
	switch t := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(t) {
			switch c := t[k].(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s%s:\n", indent, k)
				printTree(w, c, depth+1)
			default:
				fmt.Fprintf(w, "%s%s: %v\n", indent, k, c)
			}
		}
	case []any:
		for _, c := range t {
			if m, ok := c.(map[string]any); ok {
				parts := make([]string, 0, len(m))
				for _, k := range sortedKeys(m) {
					parts = append(parts, fmt.Sprintf("%s=%v", k, m[k]))
				}
				fmt.Fprintf(w, "%s- %s\n", indent, strings.Join(parts, " "))
				continue
			}
			fmt.Fprintf(w, "%s- %v\n", indent, c)
		}
	default:
		fmt.Fprintf(w, "%s%v\n", indent, t)
	}
}
