package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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

// toolBuilder makes a tool component's tool for node n: it sets t's name,
// description and run, and returns its parameters' JSON schema.
type toolBuilder func(s *state, n *flow.Node, t *tool) map[string]any

// toolBuilders are the tools of the catalog's tool components (IsTool),
// by type: the rest of the one registry with runners (MCPTools offers its
// server's tools instead, see mcpTools).
var toolBuilders = map[string]toolBuilder{
	"CalculatorComponent":   calculatorTool,
	"URLComponent":          urlTool,
	"APIRequest":            apiRequestTool,
	"FAISS":                 vectorStoreTool,
	"Chroma":                vectorStoreTool,
	"CurrentDate":           currentDateTool,
	"TavilySearchComponent": (*state).searchTool,
	"SearchComponent":       (*state).searchTool,
	"ArXivComponent":        (*state).searchTool,
}

func calculatorTool(_ *state, _ *flow.Node, t *tool) map[string]any {
	t.def = llm.Tool{Name: "evaluate_expression", Description: "Perform basic arithmetic operations on a given expression."}
	t.run = func(_ context.Context, args map[string]any) (string, error) {
		expr, _ := args["expression"].(string)
		v, err := Evaluate(expr)
		if err != nil {
			return "", errs.E(errs.Invalid, "cannot evaluate %q: %v", expr, err)
		}
		return FormatNumber(v), nil
	}
	return objectSchema(map[string]any{"expression": map[string]any{"type": "string", "description": "The arithmetic expression to evaluate (e.g., '4*4*(33/22)+12-20')."}}, "expression")
}

func urlTool(s *state, _ *flow.Node, t *tool) map[string]any {
	t.def = llm.Tool{Name: "fetch_content", Description: "Fetch content from one or more web pages."}
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
		// The URLs share one cap: a tool call never holds more.
		var out []string
		left := s.guard().maxResponse()
		for _, u := range urls[:min(len(urls), 5)] {
			body, err := s.fetch(ctx, http.MethodGet, u, nil, left)
			if err != nil {
				return "", err
			}
			left -= int64(len(body))
			out = append(out, body)
		}
		return strings.Join(out, "\n\n"), nil
	}
	return objectSchema(map[string]any{"urls": map[string]any{"type": "array", "items": map[string]any{"type": "string"}}}, "urls")
}

func vectorStoreTool(s *state, n *flow.Node, t *tool) map[string]any {
	t.def = llm.Tool{Name: "search_documents", Description: "Search the vector store for the documents most relevant to a query."}
	t.run = s.vectorTool(n)
	return objectSchema(map[string]any{"search_query": map[string]any{"type": "string", "description": "What to search for."}}, "search_query")
}

// currentDateTool is LangFlow's tool of the component's get_current_date
// output.
func currentDateTool(s *state, n *flow.Node, t *tool) map[string]any {
	t.def = llm.Tool{Name: "get_current_date", Description: "Returns the current date and time in the selected timezone."}
	t.run = func(_ context.Context, args map[string]any) (string, error) {
		zone, _ := args["timezone"].(string)
		if zone == "" {
			zone = s.text(n, "timezone")
		}
		return currentDateText(s.e.now(), zone), nil
	}
	return objectSchema(map[string]any{"timezone": map[string]any{"type": "string",
		"description": "The IANA time zone to give the date and time in (for example Europe/Paris); UTC when empty."}}, "")
}

func apiRequestTool(s *state, _ *flow.Node, t *tool) map[string]any {
	t.def = llm.Tool{Name: "make_request", Description: "Make an HTTP request to a URL."}
	t.run = func(ctx context.Context, args map[string]any) (string, error) {
		u, _ := args["url"].(string)
		method, _ := args["method"].(string)
		if method == "" {
			method = http.MethodGet
		}
		return s.fetch(ctx, strings.ToUpper(method), u, nil, s.guard().maxResponse())
	}
	return objectSchema(map[string]any{"url": map[string]any{"type": "string"}, "method": map[string]any{"type": "string"}}, "url")
}

// toolFor builds the tool a node offers: its name and parameters from the
// export's tools_metadata when present, else the component's defaults.
func (s *state) toolFor(n *flow.Node) *tool {
	t := &tool{}
	var schema map[string]any
	if b, ok := toolBuilders[n.Type]; ok {
		schema = b(s, n, t)
	} else {
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

// guard is the executor's guard, or one with the default rules.
func (s *state) guard() *Guard {
	if s.e.Guard == nil {
		return &Guard{}
	}
	return s.e.Guard
}

// fetch makes a guarded HTTP request and returns its body as text, failing
// when the body is longer than limit (what is left of the tool call's
// cap). It never holds more than limit bytes of the body.
func (s *state) fetch(ctx context.Context, method, raw string, body io.Reader, limit int64) (string, error) {
	g := s.guard()
	u, err := g.CheckURL(raw)
	if err != nil {
		return "", errs.E(errs.Forbidden, "%v", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return "", errs.E(errs.Invalid, "request %s: %v", u.Redacted(), err)
	}
	req.Header.Set("User-Agent", "Sluice/1 (+flow tool)")
	client := g.Client(30 * time.Second)
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // it repeats the URL
		}
		if e, ok := errors.AsType[*errs.Error](err); ok && e.Code == errs.Forbidden {
			return "", errs.E(errs.Forbidden, "%s", e.Message) // the guard refused where the name led
		}
		return "", errs.E(errs.Unavailable, "request %s failed: %v", u.Redacted(), err)
	}
	defer resp.Body.Close()
	tooLarge := errs.E(errs.TooLarge, "response of %s exceeds the %s cap (max_tool_response_bytes)", u.Redacted(), sizeText(g.maxResponse()))
	if resp.ContentLength > limit {
		return "", tooLarge
	}
	chunks, n, over, err := readCapped(resp.Body, limit)
	if err != nil {
		return "", errs.E(errs.Unavailable, "reading %s: %v", u.Redacted(), err)
	}
	if over {
		return "", tooLarge
	}
	head := fmt.Sprintf("%s %d\n", u.Redacted(), resp.StatusCode)
	var b strings.Builder
	b.Grow(len(head) + int(n))
	b.WriteString(head)
	for _, c := range chunks {
		b.Write(c)
	}
	return b.String(), nil
}

// readCapped reads r to its end through io.LimitReader(limit+1) and
// reports over when r holds more than limit bytes. It reads into chunks of
// growing size (32 KiB, doubling) that together never pass limit, and never
// copies them: however long r is, it holds at most limit bytes, and the
// caller's one copy makes 2×limit in all.
func readCapped(r io.Reader, limit int64) (chunks [][]byte, n int64, over bool, err error) {
	lr := io.LimitReader(r, max(limit, 0)+1)
	size := int64(32 << 10)
	for n < limit {
		c := make([]byte, min(size, limit-n))
		m, err := io.ReadFull(lr, c)
		n += int64(m)
		if m > 0 {
			chunks = append(chunks, c[:m])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return chunks, n, false, nil
		}
		if err != nil {
			return nil, 0, false, err
		}
		size *= 2
	}
	// limit bytes read: one more means the body is longer than the cap.
	var one [1]byte
	m, err := io.ReadFull(lr, one[:])
	if m > 0 {
		return nil, 0, true, nil
	}
	if err != nil && err != io.EOF {
		return nil, 0, false, err
	}
	return chunks, n, false, nil
}

// sizeText writes a byte count as people read caps: "10 MiB".
func sizeText(n int64) string {
	for _, u := range []struct {
		s string
		m int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return fmt.Sprintf("%d %s", n/u.m, u.s)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
