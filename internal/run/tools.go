package run

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// tool is a component an agent can call.
type tool struct {
	def llm.Tool
	run func(ctx context.Context, args map[string]any) (string, error)
}

// maxFetch bounds what a URL or API tool reads.
const maxFetch = 1 << 20

// toolFor builds the tool a node offers: its name and parameters from the
// export's tools_metadata when present, else the component's defaults.
func (s *state) toolFor(n *flow.Node) *tool {
	t := &tool{}
	var schema map[string]any
	switch n.Type {
	case "CalculatorComponent":
		t.def = llm.Tool{Name: "evaluate_expression", Description: "Perform basic arithmetic operations on a given expression."}
		schema = objectSchema(map[string]any{"expression": map[string]any{"type": "string", "description": "The arithmetic expression to evaluate (e.g., '4*4*(33/22)+12-20')."}}, "expression")
		t.run = func(_ context.Context, args map[string]any) (string, error) {
			expr, _ := args["expression"].(string)
			v, err := Evaluate(expr)
			if err != nil {
				return "", errs.E(errs.Invalid, "cannot evaluate %q: %v", expr, err)
			}
			return FormatNumber(v), nil
		}
	case "URLComponent":
		t.def = llm.Tool{Name: "fetch_content", Description: "Fetch content from one or more web pages."}
		schema = objectSchema(map[string]any{"urls": map[string]any{"type": "array", "items": map[string]any{"type": "string"}}}, "urls")
		t.run = func(ctx context.Context, args map[string]any) (string, error) {
			var urls []string
			switch v := args["urls"].(type) {
			case []any:
				for _, u := range v {
					if s, ok := u.(string); ok {
						urls = append(urls, s)
					}
				}
			case string:
				urls = strings.Fields(strings.ReplaceAll(v, ",", " "))
			}
			if len(urls) == 0 {
				return "", errs.E(errs.Invalid, "no URL given")
			}
			var out []string
			for _, u := range urls[:min(len(urls), 5)] {
				body, err := s.fetch(ctx, http.MethodGet, u, nil)
				if err != nil {
					return "", err
				}
				out = append(out, body)
			}
			return strings.Join(out, "\n\n"), nil
		}
	case "APIRequest":
		t.def = llm.Tool{Name: "make_request", Description: "Make an HTTP request to a URL."}
		schema = objectSchema(map[string]any{"url": map[string]any{"type": "string"}, "method": map[string]any{"type": "string"}}, "url")
		t.run = func(ctx context.Context, args map[string]any) (string, error) {
			u, _ := args["url"].(string)
			method, _ := args["method"].(string)
			if method == "" {
				method = http.MethodGet
			}
			return s.fetch(ctx, strings.ToUpper(method), u, nil)
		}
	default:
		t.def = llm.Tool{Name: n.ID, Description: n.DisplayName}
		schema = objectSchema(map[string]any{}, "")
		t.run = func(context.Context, map[string]any) (string, error) {
			return "", errs.E(errs.Unprocessable, "component %s cannot be used as a tool", n.Type)
		}
	}
	// The export's metadata names the tool as the author saw it.
	if md, ok := s.param(n, "tools_metadata").Value.([]any); ok && len(md) > 0 {
		if m, ok := md[0].(map[string]any); ok {
			if name, ok := m["name"].(string); ok && name != "" {
				t.def.Name = name
			}
			if d, ok := m["description"].(string); ok && d != "" {
				t.def.Description = d
			}
			if args, ok := m["args"].(map[string]any); ok && len(args) > 0 {
				var required []string
				for k := range args {
					required = append(required, k)
				}
				schema = map[string]any{"type": "object", "properties": args, "required": required}
			}
		}
	}
	t.def.Parameters, _ = json.Marshal(schema)
	return t
}

func objectSchema(props map[string]any, required string) map[string]any {
	s := map[string]any{"type": "object", "properties": props}
	if required != "" {
		s["required"] = []string{required}
	}
	return s
}

// toolArgs are the arguments a tool-capable node has when it runs as an
// ordinary node.
func (s *state) toolArgs(n *flow.Node) map[string]any {
	switch n.Type {
	case "CalculatorComponent":
		return map[string]any{"expression": s.text(n, "expression")}
	case "URLComponent":
		if v, ok := s.in(n, "urls"); ok {
			return map[string]any{"urls": v.text}
		}
		return map[string]any{"urls": s.param(n, "urls").Value}
	case "APIRequest":
		u := s.text(n, "url_input")
		if u == "" {
			u = s.text(n, "urls")
		}
		return map[string]any{"url": u, "method": s.param(n, "method").String()}
	}
	return nil
}

// fetch makes a guarded HTTP request and returns its body as text.
func (s *state) fetch(ctx context.Context, method, raw string, body io.Reader) (string, error) {
	g := s.e.Guard
	if g == nil {
		g = &Guard{}
	}
	u, err := g.CheckURL(raw)
	if err != nil {
		return "", errs.E(errs.Forbidden, "%v", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return "", errs.E(errs.Invalid, "request %s: %v", raw, err)
	}
	req.Header.Set("User-Agent", "Sluice/1 (+flow tool)")
	resp, err := g.Client(30 * time.Second).Do(req)
	if err != nil {
		return "", errs.E(errs.Unavailable, "request %s failed: %v", u.Redacted(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxFetch))
	if err != nil {
		return "", errs.E(errs.Unavailable, "reading %s: %v", u.Redacted(), err)
	}
	return fmt.Sprintf("%s %d\n%s", u.Redacted(), resp.StatusCode, data), nil
}
