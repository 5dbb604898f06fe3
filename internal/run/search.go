package run

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// Names of the outside services the search components call, as in the
// server's configuration (tools.<name>).
const (
	ServiceTavily    = "tavily"
	ServiceSearchAPI = "searchapi"
	ServiceArXiv     = "arxiv"
)

// ToolService is an outside API a search component calls: its base URL and
// key, from the server's configuration. The key is sent only to BaseURL
// and is never logged or put in a message.
type ToolService struct {
	BaseURL string
	Key     llm.Secret
	// KeyEnv names the environment variable the key was read from, for
	// messages; "" when none is configured.
	KeyEnv string
}

// searchTimeout bounds one call to a search service (LangFlow's Tavily
// component waits 90 s; searches answer in seconds).
const searchTimeout = 60 * time.Second

// Caps on what a flow may ask of a search service.
const (
	maxSearchResults = 50
	maxSearchQuery   = 2000
)

// searchSpec describes one search component.
type searchSpec struct {
	service string
	title   string
	// needsKey: the service refuses calls without a key.
	needsKey bool
	// queryInput is the field holding the query, also the tool's argument.
	queryInput  string
	tool        string
	description string
}

var searchSpecs = map[string]searchSpec{
	"TavilySearchComponent": {service: ServiceTavily, title: "Tavily Search", needsKey: true, queryInput: "query",
		tool: "tavily_search", description: "Search the web with Tavily, a search engine optimized for LLMs and RAG."},
	"SearchComponent": {service: ServiceSearchAPI, title: "SearchApi", needsKey: true, queryInput: "input_value",
		tool: "search_api", description: "Search the web through SearchApi (Google, Bing or DuckDuckGo)."},
	"ArXivComponent": {service: ServiceArXiv, title: "arXiv", queryInput: "search_query",
		tool: "search_papers", description: "Search and retrieve papers from arXiv.org."},
}

// isSearch reports the search component types.
func isSearch(typ string) bool { _, ok := searchSpecs[typ]; return ok }

// service returns the configured service of a search node, or the 422
// that says what the server's configuration lacks.
func (s *state) service(n *flow.Node) (searchSpec, ToolService, error) {
	spec := searchSpecs[n.Type]
	svc, ok := s.e.Tools[spec.service]
	path := "tools." + spec.service
	if !ok || svc.BaseURL == "" {
		return spec, svc, errs.Field(errs.Unprocessable, "nodes."+n.ID,
			"node %s (%s): this server has no %s service configured; set %s.base_url in its configuration, or run this flow through the LangFlow front (docs/langflow-front.md)",
			n.ID, spec.title, spec.title, path)
	}
	if spec.needsKey && svc.Key.IsZero() {
		if svc.KeyEnv == "" {
			return spec, svc, errs.Field(errs.Unprocessable, "nodes."+n.ID,
				"node %s (%s) needs an API key, which this server does not have: set %s.api_key_env in its configuration to an environment variable holding the key",
				n.ID, spec.title, path)
		}
		return spec, svc, errs.Field(errs.Unprocessable, "nodes."+n.ID,
			"node %s (%s) needs an API key, which this server does not have: set the environment variable %s (named by %s.api_key_env) in the server's environment and restart it",
			n.ID, spec.title, svc.KeyEnv, path)
	}
	return spec, svc, nil
}

// search runs a search component as a node: its query from its input,
// its results as LangFlow's component gives them (a DataFrame; a list of
// Data and their text for older exports' outputs).
func (s *state) search(ctx context.Context, n *flow.Node) error {
	spec := searchSpecs[n.Type]
	rows, err := s.searchRows(ctx, n, s.text(n, spec.queryInput))
	if err != nil {
		return err
	}
	texts := make([]string, 0, len(rows))
	for _, r := range rows {
		if t, ok := r.get("text"); ok {
			texts = append(texts, pyStr(t))
		}
	}
	for _, o := range n.Component().Outputs {
		switch o.Type {
		case "DataFrame":
			s.setOut(n.ID, o.Name, dataValue(&table{kind: dataFrame, rows: rows}))
		case "Data":
			s.setOut(n.ID, o.Name, dataValue(&table{kind: dataList, rows: rows}))
		default:
			s.setOut(n.ID, o.Name, value{text: strings.Join(texts, "\n\n")})
		}
	}
	return nil
}

// searchTool is a search component as an agent's tool: the model gives
// the query, the node's own fields the rest; it reads the results as a
// Markdown table.
func (s *state) searchTool(n *flow.Node, t *tool) map[string]any {
	spec := searchSpecs[n.Type]
	t.def = llm.Tool{Name: spec.tool, Description: spec.description}
	t.run = func(ctx context.Context, args map[string]any) (string, error) {
		q, _ := args[spec.queryInput].(string)
		if q == "" {
			q, _ = args["query"].(string)
		}
		rows, err := s.searchRows(ctx, n, q)
		if err != nil {
			return "", err
		}
		return (&table{kind: dataFrame, rows: rows}).String(false), nil
	}
	return objectSchema(map[string]any{spec.queryInput: map[string]any{"type": "string", "description": "The search query."}}, spec.queryInput)
}

// searchHere calls the node's service with query, from this process, and
// returns its results as rows.
func (s *state) searchHere(ctx context.Context, n *flow.Node, query string) ([]row, error) {
	spec, svc, err := s.service(n)
	if err != nil {
		return nil, err
	}
	query = strings.TrimSpace(query)
	if query == "" {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+spec.queryInput, "node %s (%s): the search query is empty", n.ID, spec.title)
	}
	if len(query) > maxSearchQuery {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+spec.queryInput, "node %s (%s): the search query is longer than %d bytes", n.ID, spec.title, maxSearchQuery)
	}
	maxResults := func(def int) int {
		if v, ok := s.param(n, "max_results").Int(); ok && v > 0 {
			return min(v, maxSearchResults)
		}
		return def
	}
	switch spec.service {
	case ServiceTavily:
		return s.tavily(ctx, n, spec, svc, query, maxResults(5))
	case ServiceSearchAPI:
		return s.searchAPI(ctx, n, spec, svc, query, maxResults(5))
	}
	return s.arxiv(ctx, n, spec, svc, query, maxResults(10))
}

// boolParam reads a boolean field with its LangFlow default.
func (s *state) boolParam(n *flow.Node, name string, def bool) bool {
	if v, ok := s.param(n, name).Bool(); ok {
		return v
	}
	return def
}

// strParam reads a text field with its LangFlow default.
func (s *state) strParam(n *flow.Node, name, def string) string {
	if v := s.text(n, name); v != "" {
		return v
	}
	return def
}

// tavily is LangFlow's TavilySearchComponent: POST /search; the answer
// (when asked for) as a first record, one record per result, and the
// images (when asked for) as a last one.
func (s *state) tavily(ctx context.Context, n *flow.Node, spec searchSpec, svc ToolService, query string, maxResults int) ([]row, error) {
	depth := s.strParam(n, "search_depth", "advanced")
	topic := s.strParam(n, "topic", "general")
	answer := s.boolParam(n, "include_answer", true)
	images := s.boolParam(n, "include_images", true)
	raw := s.boolParam(n, "include_raw_content", false)
	req := map[string]any{"query": query, "search_depth": depth, "topic": topic, "max_results": maxResults,
		"include_images": images, "include_answer": answer, "include_raw_content": raw}
	if topic == "news" {
		days := 7
		if v, ok := s.param(n, "days").Int(); ok && v > 0 {
			days = v
		}
		req["days"] = days
	}
	if depth == "advanced" {
		if v, ok := s.param(n, "chunks_per_source").Int(); ok && v > 0 {
			req["chunks_per_source"] = min(v, 3)
		} else if !ok {
			req["chunks_per_source"] = 3
		}
	}
	if tr := s.text(n, "time_range"); tr != "" {
		req["time_range"] = tr
	}
	for _, f := range []string{"include_domains", "exclude_domains"} {
		var list []string
		for d := range strings.SplitSeq(s.text(n, f), ",") {
			if d = strings.TrimSpace(d); d != "" {
				list = append(list, d)
			}
		}
		if len(list) > 0 {
			req[f] = list
		}
	}
	body, _ := json.Marshal(req)
	b, err := s.callService(ctx, n, spec, svc, http.MethodPost, "/search", nil, body, true)
	if err != nil {
		return nil, err
	}
	var res struct {
		Answer  string `json:"answer"`
		Results []struct {
			Title      any `json:"title"`
			URL        any `json:"url"`
			Content    any `json:"content"`
			Score      any `json:"score"`
			RawContent any `json:"raw_content"`
		} `json:"results"`
		Images []any `json:"images"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, badAnswer(n, spec, err)
	}
	var rows []row
	if answer && res.Answer != "" {
		rows = append(rows, row{{"text", res.Answer}})
	}
	for _, r := range res.Results {
		content := r.Content
		if content == nil {
			content = ""
		}
		rw := row{{"title", r.Title}, {"url", r.URL}, {"content", content}, {"score", r.Score}}
		if raw {
			rw = append(rw, field{"raw_content", r.RawContent})
		}
		rows = append(rows, append(rw, field{"text", content}))
	}
	if images && len(res.Images) > 0 {
		rows = append(rows, row{{"images", res.Images}, {"text", "Images found"}})
	}
	return rows, nil
}

// searchAPI is LangFlow's SearchComponent: GET /api/v1/search with the
// engine, the query and the key; the first max_results organic results,
// title and snippet cut to max_snippet_length characters.
func (s *state) searchAPI(ctx context.Context, n *flow.Node, spec searchSpec, svc ToolService, query string, maxResults int) ([]row, error) {
	q := url.Values{}
	// search_params (a dict, or LangFlow's list of dicts) go first, so that
	// they cannot replace the engine, query or key.
	var params []map[string]any
	switch v := s.param(n, "search_params").Value.(type) {
	case map[string]any:
		params = append(params, v)
	case []any:
		for _, e := range v {
			if m, ok := e.(map[string]any); ok {
				params = append(params, m)
			}
		}
	}
	for _, m := range params {
		for _, k := range sortedKeys(m) {
			q.Set(k, pyStr(m[k]))
		}
	}
	q.Set("engine", s.strParam(n, "engine", "google"))
	q.Set("q", query)
	q.Set("api_key", svc.Key.Reveal())
	b, err := s.callService(ctx, n, spec, svc, http.MethodGet, "/api/v1/search", q, nil, false)
	if err != nil {
		return nil, err
	}
	var res struct {
		Organic []struct {
			Title   string `json:"title"`
			Link    string `json:"link"`
			Snippet string `json:"snippet"`
		} `json:"organic_results"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, badAnswer(n, spec, err)
	}
	cut := 100
	if v, ok := s.param(n, "max_snippet_length").Int(); ok && v >= 0 {
		cut = v
	}
	rows := make([]row, 0, min(len(res.Organic), maxResults))
	for _, r := range res.Organic[:min(len(res.Organic), maxResults)] {
		rows = append(rows, row{{"title", runePrefix(r.Title, cut)}, {"link", r.Link}, {"snippet", runePrefix(r.Snippet, cut)}, {"text", r.Snippet}})
	}
	return rows, nil
}

// runePrefix is s[:n] in characters, as Python slices a str.
func runePrefix(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// atomFeed is arXiv's Atom feed.
type atomFeed struct {
	Entries []atomEntry `xml:"http://www.w3.org/2005/Atom entry"`
}

type atomEntry struct {
	ID        *string `xml:"http://www.w3.org/2005/Atom id"`
	Title     *string `xml:"http://www.w3.org/2005/Atom title"`
	Summary   *string `xml:"http://www.w3.org/2005/Atom summary"`
	Published *string `xml:"http://www.w3.org/2005/Atom published"`
	Updated   *string `xml:"http://www.w3.org/2005/Atom updated"`
	Authors   []struct {
		Name string `xml:"http://www.w3.org/2005/Atom name"`
	} `xml:"http://www.w3.org/2005/Atom author"`
	Links []struct {
		Rel  string `xml:"rel,attr"`
		Href string `xml:"href,attr"`
	} `xml:"http://www.w3.org/2005/Atom link"`
	Comment    *string `xml:"http://arxiv.org/schemas/atom comment"`
	JournalRef *string `xml:"http://arxiv.org/schemas/atom journal_ref"`
	Primary    *struct {
		Term string `xml:"term,attr"`
	} `xml:"http://arxiv.org/schemas/atom primary_category"`
	Categories []struct {
		Term string `xml:"term,attr"`
	} `xml:"http://www.w3.org/2005/Atom category"`
}

// arxiv is LangFlow's ArXivComponent: GET /api/query with search_query
// (prefixed by the search field: ti, abs, au, cat) and max_results; one
// record per entry of the Atom feed, with LangFlow's fields.
func (s *state) arxiv(ctx context.Context, n *flow.Node, spec searchSpec, svc ToolService, query string, maxResults int) ([]row, error) {
	prefix := map[string]string{"title": "ti", "abstract": "abs", "author": "au", "cat": "cat"}
	sq := query
	if p, ok := prefix[s.strParam(n, "search_type", "all")]; ok {
		sq = p + ":" + query
	}
	q := url.Values{"search_query": {sq}, "max_results": {fmt.Sprint(maxResults)}}
	b, err := s.callService(ctx, n, spec, svc, http.MethodGet, "/api/query", q, nil, true)
	if err != nil {
		return nil, err
	}
	var feed atomFeed
	if err := xml.Unmarshal(b, &feed); err != nil {
		return nil, badAnswer(n, spec, err)
	}
	text := func(p *string) any {
		if p == nil || strings.TrimSpace(*p) == "" {
			return nil
		}
		return strings.TrimSpace(*p)
	}
	rows := make([]row, 0, len(feed.Entries))
	for _, e := range feed.Entries {
		authors := make([]any, 0, len(e.Authors))
		for _, a := range e.Authors {
			authors = append(authors, a.Name)
		}
		link := func(rel string) any {
			for _, l := range e.Links {
				if l.Rel == rel {
					return l.Href
				}
			}
			return nil
		}
		var primary any
		if e.Primary != nil {
			primary = e.Primary.Term
		}
		cats := make([]any, 0, len(e.Categories))
		for _, c := range e.Categories {
			cats = append(cats, c.Term)
		}
		rows = append(rows, row{{"id", text(e.ID)}, {"title", text(e.Title)}, {"summary", text(e.Summary)},
			{"published", text(e.Published)}, {"updated", text(e.Updated)}, {"authors", authors},
			{"arxiv_url", link("alternate")}, {"pdf_url", link("related")}, {"comment", text(e.Comment)},
			{"journal_ref", text(e.JournalRef)}, {"primary_category", primary}, {"categories", cats}})
	}
	return rows, nil
}

func badAnswer(n *flow.Node, spec searchSpec, err error) error {
	return errs.E(errs.Unavailable, "node %s (%s): the %s service's answer is not in its format: %v", n.ID, spec.title, spec.title, err)
}

// callService makes one request to a search service through the SSRF
// guard, which is told to let the configured base URL's host through (an
// operator chose it; it may be a private mirror). The body read is capped
// at max_tool_response_bytes. Messages name the service and path, never
// the URL's query or the key. bearer sends the key as a Bearer token.
func (s *state) callService(ctx context.Context, n *flow.Node, spec searchSpec, svc ToolService, method, path string, q url.Values, body []byte, bearer bool) ([]byte, error) {
	what := fmt.Sprintf("node %s (%s): %s %s", n.ID, spec.title, method, path)
	base, err := url.Parse(strings.TrimRight(svc.BaseURL, "/"))
	if err != nil || base.Host == "" {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID, "node %s (%s): tools.%s.base_url is not a URL", n.ID, spec.title, spec.service)
	}
	u := *base
	u.Path = base.Path + path
	u.RawQuery = q.Encode()
	g := *s.guard()
	g.AllowHosts = append(slices.Clone(g.AllowHosts), base.Host)
	if _, err := g.CheckURL(u.String()); err != nil {
		return nil, errs.E(errs.Forbidden, "%s: %v", what, err)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, errs.E(errs.Invalid, "%s: %v", what, err)
	}
	req.Header.Set("User-Agent", "Sluice/1 (+flow tool)")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer && !svc.Key.IsZero() {
		req.Header.Set("Authorization", "Bearer "+svc.Key.Reveal())
	}
	client := g.Client(searchTimeout)
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // it repeats the URL, query and key included
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx.Err())
		}
		return nil, errs.E(errs.Unavailable, "%s failed: %v", what, err)
	}
	defer resp.Body.Close()
	limit := g.maxResponse()
	if resp.ContentLength > limit {
		return nil, errs.E(errs.TooLarge, "%s: the answer exceeds the %s cap (max_tool_response_bytes)", what, sizeText(limit))
	}
	chunks, _, over, err := readCapped(resp.Body, limit)
	if err != nil {
		return nil, errs.E(errs.Unavailable, "%s: reading the answer: %v", what, err)
	}
	if over {
		return nil, errs.E(errs.TooLarge, "%s: the answer exceeds the %s cap (max_tool_response_bytes)", what, sizeText(limit))
	}
	b := bytes.Join(chunks, nil)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		detail := strings.TrimSpace(string(b[:min(len(b), 300)]))
		if k := svc.Key.Reveal(); k != "" {
			detail = strings.ReplaceAll(detail, k, "<redacted>")
		}
		code := errs.Unavailable
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			code = errs.Unprocessable // a wrong key: the operator's to fix
		}
		return nil, errs.E(code, "%s: the service answered %d: %s", what, resp.StatusCode, strings.ToValidUTF8(detail, ""))
	}
	return b, nil
}
