package httpapi

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
)

// openAPI is the OpenAPI 3.1 document of the routes the server serves,
// generated from them (handler's list): a route cannot be missing from it,
// nor the document name one that is not served. Each route's summary and
// tag come from routeDocs; a route without an entry there fails
// TestOpenAPIMatchesTheRoutes.
func (s *Server) openAPI(served []string) []byte {
	paths := map[string]map[string]any{}
	for _, p := range served {
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			continue // a catch-all, not a route
		}
		oaPath, params := openAPIPath(path)
		if oaPath != "/" {
			oaPath = strings.TrimSuffix(oaPath, "/") // {$}: the same collection
		}
		if _, dup := paths[oaPath][strings.ToLower(method)]; dup {
			continue
		}
		d := routeDocs[p]
		op := map[string]any{
			"operationId": operationID(method, oaPath),
			"summary":     d.summary,
			"tags":        []string{d.tag},
			"responses": map[string]any{
				"200":     map[string]any{"description": "success (201 for a creation)"},
				"default": map[string]any{"description": "an error", "content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Error"}}}},
			},
		}
		if len(params) > 0 {
			var ps []any
			for _, name := range params {
				ps = append(ps, map[string]any{"name": name, "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
			}
			op["parameters"] = ps
		}
		if d.public {
			op["security"] = []any{}
		}
		if method == "POST" || method == "PUT" || method == "PATCH" {
			op["requestBody"] = map[string]any{"content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}}
		}
		if paths[oaPath] == nil {
			paths[oaPath] = map[string]any{}
		}
		paths[oaPath][strings.ToLower(method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "Sluice", "version": s.Version,
			"description": "The governor of a shared LLM-workflow platform: tenancy, quotas, flow runs, the OpenAI-compatible gateway. Each operation's details are in docs/api.md."},
		"paths": paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"apiKey": map[string]any{"type": "apiKey", "in": "header", "name": "x-api-key"},
				"bearer": map[string]any{"type": "http", "scheme": "bearer"},
			},
			"schemas": map[string]any{
				"Error": map[string]any{"type": "object", "properties": map[string]any{
					"error": map[string]any{"type": "object", "properties": map[string]any{
						"code": map[string]any{"type": "string"}, "message": map[string]any{"type": "string"},
						"field": map[string]any{"type": "string"}, "request_id": map[string]any{"type": "string"},
					}},
				}},
			},
		},
		"security": []any{map[string]any{"apiKey": []any{}}, map[string]any{"bearer": []any{}}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic("openapi: " + err.Error()) // maps of strings and slices always encode
	}
	return b
}

var wildcard = regexp.MustCompile(`\{([a-z_$]+)(\.\.\.)?\}`)

// openAPIPath turns a ServeMux path into an OpenAPI one: {name...} is
// {name} (it may hold slashes, e.g. a scope "user/usr_1"), {$} goes.
func openAPIPath(path string) (string, []string) {
	var params []string
	out := wildcard.ReplaceAllStringFunc(path, func(m string) string {
		name := wildcard.FindStringSubmatch(m)[1]
		if name == "$" {
			return ""
		}
		params = append(params, name)
		return "{" + name + "}"
	})
	return out, params
}

// operationID names an operation from its method and path.
func operationID(method, path string) string {
	parts := []string{strings.ToLower(method)}
	for _, seg := range strings.Split(path, "/") {
		seg = strings.Trim(seg, "{}")
		if seg == "" || seg == "api" {
			continue
		}
		parts = append(parts, strings.ReplaceAll(strings.ReplaceAll(seg, "-", "_"), ".", "_"))
	}
	return strings.Join(parts, "_")
}

// routeDoc is a route's summary and tag in the OpenAPI document.
type routeDoc struct {
	tag, summary string
	public       bool // served without a key
}

// documented lists routeDocs' patterns (tests).
func documented() []string {
	out := make([]string, 0, len(routeDocs))
	for p := range routeDocs {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
