package llm

import (
	"encoding/json"
	"sort"
	"strings"
)

// simulatedJSON is the simulated model's answer to a request with a
// Schema: a value that conforms to it, the same for the same request.
// Strings quote the start of the last user message, numbers are 1,
// booleans true, arrays hold max(minItems, 1) items, and objects have
// every property the schema lists. Flows that ask for structured output
// thus run offline and downstream components see well-formed data.
func simulatedJSON(r Request) string {
	var schema map[string]any
	if err := json.Unmarshal(r.Schema.Schema, &schema); err != nil {
		return "{}"
	}
	quote := quoteStart(lastContent(r.Messages, RoleUser), 8)
	if quote == "" {
		quote = "simulated"
	}
	b, err := json.Marshal(schemaExample(schema, quote, 0))
	if err != nil {
		return "{}"
	}
	return string(b)
}

// schemaExample builds a value of schema; depth bounds recursion through
// self-similar schemas.
func schemaExample(schema map[string]any, quote string, depth int) any {
	if depth > 16 {
		return nil
	}
	if v, ok := schema["const"]; ok {
		return v
	}
	if e, ok := schema["enum"].([]any); ok && len(e) > 0 {
		return e[0]
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		if alts, ok := schema[key].([]any); ok && len(alts) > 0 {
			if s, ok := alts[0].(map[string]any); ok {
				return schemaExample(s, quote, depth+1)
			}
		}
	}
	typ := schema["type"]
	if ts, ok := typ.([]any); ok && len(ts) > 0 {
		typ = ts[0]
	}
	switch typ {
	case "object":
		props, _ := schema["properties"].(map[string]any)
		out := make(map[string]any, len(props))
		names := make([]string, 0, len(props))
		for k := range props {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			p, _ := props[k].(map[string]any)
			out[k] = schemaExample(p, quote, depth+1)
		}
		return out
	case "array":
		items, _ := schema["items"].(map[string]any)
		n := 1
		if m, ok := schema["minItems"].(float64); ok && int(m) > n {
			n = min(int(m), 16)
		}
		out := make([]any, n)
		for i := range out {
			out[i] = schemaExample(items, quote, depth+1)
		}
		return out
	case "string":
		return strings.TrimSpace(quote)
	case "integer", "number":
		return 1
	case "boolean":
		return true
	case "null":
		return nil
	}
	return quote
}
