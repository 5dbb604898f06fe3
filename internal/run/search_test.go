package run_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/run"
)

const searchKey = "tvly-dev-SECRET-4f1e9a"

// searchFlow is a search node between the chat input and a Parser.
func searchFlow(typ, queryInput, params, pattern string) string {
	return fmt.Sprintf(`{"nodes":[
		{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
		{"id":"search","type":"%s","data":%s},
		{"id":"p","type":"ParserComponent","data":{"pattern":%q,"sep":"\n"}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"in","target":"search","targetHandle":"%s"},
		{"source":"search","sourceHandle":"dataframe","target":"p"},{"source":"p","target":"out"}]}`, typ, params, pattern, queryInput)
}

// withTools returns the harness's executor with the tool services.
func withTools(h *harness, tools map[string]run.ToolService) *run.Executor {
	exec := *h.exec
	exec.Tools = tools
	return &exec
}

// tavilyServer speaks Tavily's POST /search.
func tavilyServer(t *testing.T, got *map[string]any) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/search" || r.Header.Get("Authorization") != "Bearer "+searchKey {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"detail":{"error":"Unauthorized: missing or invalid API key."}}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, got); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"query":"who built the analytical engine","follow_up_questions":null,
			"answer":"Charles Babbage designed the Analytical Engine.","images":[],
			"results":[{"url":"https://en.wikipedia.org/wiki/Analytical_engine","title":"Analytical engine - Wikipedia","content":"The analytical engine was a proposed digital mechanical general-purpose computer designed by Charles Babbage.","score":0.98,"raw_content":null},
			{"url":"https://www.computerhistory.org/babbage/","title":"The Babbage Engine","content":"Babbage began in 1821 with Difference Engine No. 1.","score":0.91,"raw_content":null}],
			"response_time":1.67}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestTavilySearchNode(t *testing.T) {
	var got map[string]any
	srv := tavilyServer(t, &got)
	h := newHarness(t)
	exec := withTools(h, map[string]run.ToolService{run.ServiceTavily: {BaseURL: srv.URL, Key: llm.NewSecret(searchKey), KeyEnv: "TAVILY_API_KEY"}})
	f := searchFlow("TavilySearchComponent", "query", `{"max_results":2,"search_depth":"basic","include_images":false}`, "{text}")
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "who built the analytical engine"))
	if err != nil {
		t.Fatal(err)
	}
	want := "Charles Babbage designed the Analytical Engine.\nThe analytical engine was a proposed digital mechanical general-purpose computer designed by Charles Babbage.\nBabbage began in 1821 with Difference Engine No. 1."
	if res.Outputs[0].Text != want {
		t.Errorf("output: got %q, want %q", res.Outputs[0].Text, want)
	}
	if got["query"] != "who built the analytical engine" || got["max_results"] != 2.0 || got["search_depth"] != "basic" || got["include_answer"] != true {
		t.Errorf("request: got %v, want the query, max_results 2, basic depth, include_answer", got)
	}
	if _, ok := got["chunks_per_source"]; ok {
		t.Errorf("request: got chunks_per_source with basic depth; LangFlow sends it only with advanced")
	}
}

func TestSearchAPINode(t *testing.T) {
	var query map[string][]string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/search" || r.URL.Query().Get("api_key") != searchKey {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"Invalid API key. Your API key should be here: https://www.searchapi.io/"}`)
			return
		}
		query = r.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"search_metadata":{"id":"search_abc","status":"Success","request_time_taken":1.2},
			"search_parameters":{"engine":"google","q":"sluice gate"},
			"organic_results":[
				{"position":1,"title":"Sluice - Wikipedia, the free encyclopedia","link":"https://en.wikipedia.org/wiki/Sluice","source":"Wikipedia","domain":"en.wikipedia.org","displayed_link":"https://en.wikipedia.org › wiki › Sluice","snippet":"A sluice is a water channel containing a sluice gate, a type of lock to manage the water flow and water level."},
				{"position":2,"title":"Sluice gate","link":"https://example.org/gate","snippet":"Second."}]}`)
	}))
	t.Cleanup(srv.Close)
	h := newHarness(t)
	exec := withTools(h, map[string]run.ToolService{run.ServiceSearchAPI: {BaseURL: srv.URL, Key: llm.NewSecret(searchKey), KeyEnv: "SEARCHAPI_API_KEY"}})
	f := searchFlow("SearchComponent", "input_value", `{"engine":"bing","max_results":1,"max_snippet_length":20,"search_params":[{"gl":"us","engine":"ignored"}]}`, "{title}|{link}|{snippet}")
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "sluice gate"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Sluice - Wikipedia, |https://en.wikipedia.org/wiki/Sluice|A sluice is a water "; res.Outputs[0].Text != want {
		t.Errorf("output: got %q, want %q", res.Outputs[0].Text, want)
	}
	if query["engine"][0] != "bing" || query["q"][0] != "sluice gate" || query["gl"][0] != "us" {
		t.Errorf("query: got %v, want engine bing, q, and the search_params", query)
	}
}

const arxivFeed = `<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?search_query%3Dti%3Aquantum%26id_list%3D%26start%3D0%26max_results%3D2" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query=ti:quantum&amp;id_list=&amp;start=0&amp;max_results=2</title>
  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>
  <updated>2024-05-01T00:00:00-04:00</updated>
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">41234</opensearch:totalResults>
  <opensearch:startIndex xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">0</opensearch:startIndex>
  <opensearch:itemsPerPage xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">2</opensearch:itemsPerPage>
  <entry>
    <id>http://arxiv.org/abs/quant-ph/0201082v1</id>
    <updated>2002-01-17T20:25:16Z</updated>
    <published>2002-01-17T20:25:16Z</published>
    <title>Quantum Computation and
  Quantum Information</title>
    <summary>  We review the basics.
</summary>
    <author>
      <name>Michael A. Nielsen</name>
    </author>
    <author>
      <name>Isaac L. Chuang</name>
    </author>
    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">10 pages</arxiv:comment>
    <link href="http://arxiv.org/abs/quant-ph/0201082v1" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/quant-ph/0201082v1" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="quant-ph" scheme="http://arxiv.org/schemas/atom"/>
    <category term="quant-ph" scheme="http://arxiv.org/schemas/atom"/>
    <category term="cs.ET" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
  <entry>
    <id>http://arxiv.org/abs/1801.00862v3</id>
    <updated>2018-07-31T17:56:39Z</updated>
    <published>2018-01-02T22:46:29Z</published>
    <title>Quantum Computing in the NISQ era and beyond</title>
    <summary>Noisy Intermediate-Scale Quantum technology.</summary>
    <author>
      <name>John Preskill</name>
    </author>
    <arxiv:journal_ref xmlns:arxiv="http://arxiv.org/schemas/atom">Quantum 2, 79 (2018)</arxiv:journal_ref>
    <link href="http://arxiv.org/abs/1801.00862v3" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/1801.00862v3" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="quant-ph" scheme="http://arxiv.org/schemas/atom"/>
    <category term="quant-ph" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
</feed>`

// arxivServer speaks arXiv's GET /api/query.
func arxivServer(t *testing.T, queries *[]string) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/query" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		*queries = append(*queries, r.URL.Query().Get("search_query")+"|"+r.URL.Query().Get("max_results"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/atom+xml; charset=utf-8")
		fmt.Fprint(w, arxivFeed)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestArXivNode(t *testing.T) {
	var queries []string
	srv := arxivServer(t, &queries)
	h := newHarness(t)
	exec := withTools(h, map[string]run.ToolService{run.ServiceArXiv: {BaseURL: srv.URL}})
	f := searchFlow("ArXivComponent", "search_query", `{"search_type":"title","max_results":2}`,
		"{title}|{authors}|{pdf_url}|{primary_category}|{comment}|{journal_ref}|{categories}")
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "quantum"))
	if err != nil {
		t.Fatal(err)
	}
	want := "Quantum Computation and\n  Quantum Information|['Michael A. Nielsen', 'Isaac L. Chuang']|http://arxiv.org/pdf/quant-ph/0201082v1|quant-ph|10 pages|None|['quant-ph', 'cs.ET']\n" +
		"Quantum Computing in the NISQ era and beyond|['John Preskill']|http://arxiv.org/pdf/1801.00862v3|quant-ph|None|Quantum 2, 79 (2018)|['quant-ph']"
	if res.Outputs[0].Text != want {
		t.Errorf("output:\ngot  %q\nwant %q", res.Outputs[0].Text, want)
	}
	if len(queries) != 1 || queries[0] != "ti:quantum|2" {
		t.Errorf("queries: got %v, want [ti:quantum|2]", queries)
	}
}

func TestSearchRefusals(t *testing.T) {
	var got map[string]any
	srv := tavilyServer(t, &got)
	f := searchFlow("TavilySearchComponent", "query", `{}`, "{text}")
	tests := []struct {
		name  string
		tools map[string]run.ToolService
		code  errs.Code
		want  string
	}{
		{"no key", map[string]run.ToolService{run.ServiceTavily: {BaseURL: srv.URL, KeyEnv: "TAVILY_API_KEY"}},
			errs.Unprocessable, "set the environment variable TAVILY_API_KEY (named by tools.tavily.api_key_env)"},
		{"no key variable", map[string]run.ToolService{run.ServiceTavily: {BaseURL: srv.URL}},
			errs.Unprocessable, "set tools.tavily.api_key_env"},
		{"no service", nil, errs.Unprocessable, "set tools.tavily.base_url"},
		{"wrong key", map[string]run.ToolService{run.ServiceTavily: {BaseURL: srv.URL, Key: llm.NewSecret("tvly-wrong-" + searchKey)}},
			errs.Unprocessable, "answered 401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			_, err := withTools(h, tt.tools).Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "q"))
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Message, "node search (Tavily Search)") || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("run: got %v, want %s naming node search and saying %q", err, tt.code, tt.want)
			}
			if strings.Contains(err.Error(), searchKey) {
				t.Errorf("error %q shows the key", err)
			}
		})
	}
}

// TestSearchKeyNeverInMessages: the SearchApi key travels in the query,
// which a failed request's error would repeat; it must not.
func TestSearchKeyNeverInMessages(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, `{"error":"upstream failed for %s"}`, r.URL.Query().Get("api_key"))
	}))
	closed := srv.URL
	srv.Close() // a refused connection, whose error names the URL
	live := httptest.NewServer(srv.Config.Handler)
	t.Cleanup(live.Close)
	f := searchFlow("SearchComponent", "input_value", `{}`, "{text}")
	for _, base := range []string{closed, live.URL} {
		h := newHarness(t)
		_, err := withTools(h, map[string]run.ToolService{run.ServiceSearchAPI: {BaseURL: base, Key: llm.NewSecret(searchKey)}}).
			Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "q"))
		if err == nil || errs.CodeOf(err) != errs.Unavailable {
			t.Fatalf("run against %s: got %v, want unavailable", base, err)
		}
		if strings.Contains(err.Error(), searchKey) {
			t.Errorf("error %q shows the key", err)
		}
	}
}

// scriptedOpenAI answers chat completions in OpenAI's wire format: a call
// of the tool named in the first request, then a final answer that quotes
// the tool's result, and keeps the requests' messages.
func scriptedOpenAI(t *testing.T, toolArgs string) (*httptest.Server, *[][]any) {
	t.Helper()
	var mu sync.Mutex
	var seen [][]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Messages []any `json:"messages"`
			Tools    []struct {
				Function struct {
					Name string `json:"name"`
				} `json:"function"`
			} `json:"tools"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Tools) == 0 {
			http.Error(w, `{"error":{"message":"want tools","type":"invalid_request_error"}}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		seen = append(seen, body.Messages)
		n := len(seen)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n == 1 {
			args, _ := json.Marshal(toolArgs)
			fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function","function":{"name":%q,"arguments":%s}}],"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":80,"completion_tokens":20,"total_tokens":100}}`,
				body.Tools[0].Function.Name, args)
			return
		}
		fmt.Fprint(w, `{"id":"chatcmpl-2","object":"chat.completion","created":1741570284,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Nielsen and Chuang wrote it.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":300,"completion_tokens":10,"total_tokens":310}}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &seen
}

const agentSearchFlow = `{"nodes":[
	{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"arxiv","type":"ArXivComponent","data":{"max_results":1}},
	{"id":"agent","type":"Agent","data":{"model_name":"gpt-4o-mini"}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
],"edges":[{"source":"in","target":"agent","targetHandle":"input_value"},
	{"source":"arxiv","sourceHandle":"component_as_tool","target":"agent","targetHandle":"tools"},
	{"source":"agent","target":"out"}]}`

func TestArXivAsAgentTool(t *testing.T) {
	var queries []string
	arxiv := arxivServer(t, &queries)
	oai, seen := scriptedOpenAI(t, `{"search_query":"quantum information"}`)
	h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: oai.URL, APIKey: llm.NewSecret("sk-test"), Default: true})
	exec := withTools(h, map[string]run.ToolService{run.ServiceArXiv: {BaseURL: arxiv.URL}})
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, []byte(agentSearchFlow)), "Who wrote the quantum information book?"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Outputs[0].Text != "Nielsen and Chuang wrote it." {
		t.Errorf("output: got %q", res.Outputs[0].Text)
	}
	if len(queries) != 1 || queries[0] != "quantum information|1" {
		t.Errorf("arXiv queries: got %v, want the agent's query with the node's max_results", queries)
	}
	if len(*seen) != 2 {
		t.Fatalf("model calls: got %d, want 2", len(*seen))
	}
	second := (*seen)[1]
	last, _ := second[len(second)-1].(map[string]any)
	if last["role"] != "tool" || !strings.Contains(fmt.Sprint(last["content"]), "Quantum Computation and") {
		t.Errorf("tool result: got %v, want the papers as a table", last)
	}
	// Two model turns and one tool call, each a step, plus in, agent, out.
	if res.Steps != 6 {
		t.Errorf("steps: got %d, want 6", res.Steps)
	}
}

// TestSearchToolWithoutKeyFailsFirst: an agent's search tool that cannot
// work refuses the run before any model call is paid for.
func TestSearchToolWithoutKeyFailsFirst(t *testing.T) {
	oai, seen := scriptedOpenAI(t, `{"query":"x"}`)
	h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: oai.URL, APIKey: llm.NewSecret("sk-test"), Default: true})
	f := strings.Replace(agentSearchFlow, `"type":"ArXivComponent","data":{"max_results":1}`, `"type":"TavilySearchComponent","data":{}`, 1)
	exec := withTools(h, map[string]run.ToolService{run.ServiceTavily: {BaseURL: "https://api.tavily.example", KeyEnv: "TAVILY_API_KEY"}})
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, []byte(f)), "q"))
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.arxiv" || !strings.Contains(e.Message, "TAVILY_API_KEY") {
		t.Fatalf("run: got %v, want unprocessable at nodes.arxiv naming TAVILY_API_KEY", err)
	}
	if len(*seen) != 0 || res.Usage != (run.Usage{}) {
		t.Errorf("got %d model calls and usage %+v, want none", len(*seen), res.Usage)
	}
}
