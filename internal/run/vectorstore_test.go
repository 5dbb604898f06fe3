package run_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/vector"
)

// ragDoc is four lines on four topics: SplitText with chunk_size 130 and
// no overlap makes one chunk of each.
const ragDoc = "Sluice meters every model call: it reserves tokens before the call and settles what the provider reported.\n" +
	"Quota scopes form a tree: global, tenant, departments, project, user, and the membership of the project.\n" +
	"The simulated model answers offline, so demos and load tests need no provider key at all.\n" +
	"Vector stores keep embedded chunks per tenant and project; a search ranks chunks by cosine similarity.\n"

// ragFlow ingests the TextInput's document, split, into a vector store of
// type %[1]s and searches it with the ChatInput's question; the nearest
// chunks, parsed to text, are the output.
const ragFlow = `{"nodes":[
	{"id":"doc","type":"TextInput","data":{"input_value":%[2]q}},
	{"id":"split","type":"SplitText","data":{"chunk_size":130,"chunk_overlap":0,"separator":"\n"}},
	{"id":"emb","type":"OpenAIEmbeddings","data":{"model":"text-embedding-3-small"}},
	{"id":"q","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"store","type":"%[1]s","data":{"number_of_results":%[3]d}},
	{"id":"p","type":"ParserComponent","data":{"pattern":"{text}","sep":"\n"}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
],"edges":[
	{"source":"doc","target":"split","targetHandle":"data_inputs"},
	{"source":"split","sourceHandle":"dataframe","target":"store","targetHandle":"ingest_data"},
	{"source":"emb","sourceHandle":"embeddings","target":"store","targetHandle":"embedding"},
	{"source":"q","target":"store","targetHandle":"search_query"},
	{"source":"store","sourceHandle":"search_results","target":"p","targetHandle":"input_data"},
	{"source":"p","target":"out"}
]}`

// queryFlow only searches the store.
const queryFlow = `{"nodes":[
	{"id":"emb","type":"EmbeddingModel","data":{"model":[{"name":"text-embedding-3-small","provider":"OpenAI"}]}},
	{"id":"q","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"store","type":"%s","data":{"number_of_results":1}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
],"edges":[
	{"source":"emb","sourceHandle":"embeddings","target":"store","targetHandle":"embedding"},
	{"source":"q","target":"store","targetHandle":"search_query"},
	{"source":"store","sourceHandle":"dataframe","target":"out"}
]}`

func TestVectorStoreIngestAndSearch(t *testing.T) {
	for _, typ := range []string{"FAISS", "Chroma"} {
		t.Run(typ, func(t *testing.T) {
			h := newHarness(t)
			h.exec.Vectors = h.store.Vectors(vector.Limits{})
			job := h.job(parseFlow(t, []byte(jsonf(ragFlow, typ, ragDoc, 1))), "How are quota scopes arranged in a tree?")
			res, err := h.exec.Execute(context.Background(), job)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			got := res.Outputs[0].Text
			if !strings.HasPrefix(got, "Quota scopes form a tree") || strings.Contains(got, "\n") {
				t.Errorf("got %q, want the one chunk about quota scopes", got)
			}
			var tr run.NodeTrace
			for _, x := range res.Trace {
				if x.NodeID == "store" {
					tr = x
				}
			}
			// One call embeds the four chunks, one the question.
			if tr.Calls != 2 || tr.Usage.InputTokens == 0 || tr.Usage.OutputTokens != 0 {
				t.Errorf("store trace: got %d calls, usage %+v; want 2 calls with input tokens only", tr.Calls, tr.Usage)
			}

			// A later run finds the chunks stored, and a second ingest of
			// the same document adds nothing for Chroma (duplicates) and
			// rebuilds the index for FAISS: four chunks either way.
			if _, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ragFlow, typ, ragDoc, 1))), "x")); err != nil {
				t.Fatal(err)
			}
			ns := map[string]string{"FAISS": "faiss/langflow_index", "Chroma": "chroma/langflow"}[typ]
			info, err := h.exec.Vectors.Info(context.Background(), vector.Key{TenantID: h.who.TenantID, ProjectID: h.who.ProjectID, Collection: ns})
			if err != nil || info.Count != 4 || info.Model != "text-embedding-3-small" && !strings.HasPrefix(info.Model, "simulated") {
				t.Errorf("collection: got %+v, %v; want 4 documents", info, err)
			}
			res, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(queryFlow, typ))), "Which model answers offline for demos?"))
			if err != nil {
				t.Fatalf("query run: %v", err)
			}
			if got := res.Outputs[0].Text; !strings.Contains(got, "The simulated model answers offline") || strings.Contains(got, "Quota") {
				t.Errorf("query: got %q, want the table of the one chunk about the simulated model", got)
			}

			// Another project of the tenant sees none of it.
			other := h.job(parseFlow(t, []byte(jsonf(queryFlow, typ))), "Which model answers offline for demos?")
			other.Who.ProjectID = h.otherProject()
			res, err = h.exec.Execute(context.Background(), other)
			if err != nil {
				t.Fatalf("other project's run: %v", err)
			}
			if got := res.Outputs[0].Text; strings.Contains(got, "simulated") {
				t.Errorf("another project's search: got %q, want no document", got)
			}
		})
	}
}

// otherProject makes a second project of the tenant with the member in
// it, and returns its id.
func (h *harness) otherProject() string {
	h.tb.Helper()
	p, err := h.ten.CreateProject(h.admin, tenancy.ProjectInput{TenantID: h.who.TenantID, Name: "other"})
	if err != nil {
		h.tb.Fatal(err)
	}
	if _, err := h.ten.AddMember(h.admin, tenancy.MembershipInput{UserID: h.who.UserID, ProjectID: p.ID}); err != nil {
		h.tb.Fatal(err)
	}
	return p.ID
}

// jsonf is fmt.Sprintf for flow templates.
func jsonf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func TestVectorStoreBoundsAndErrors(t *testing.T) {
	h := newHarness(t)
	h.exec.Vectors = vector.NewMemory(vector.Limits{MaxPerCollection: 3})
	res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ragFlow, "Chroma", ragDoc, 1))), "q"))
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.store.ingest_data" || !strings.Contains(e.Message, "max_per_collection") {
		t.Fatalf("four chunks into a collection of three: got %v, want unprocessable at nodes.store.ingest_data", err)
	}
	if res.Usage.InputTokens != 0 {
		t.Errorf("a refused ingest spent %d tokens on embeddings, want none", res.Usage.InputTokens)
	}

	// No embeddings edge.
	noEmb := `{"nodes":[{"id":"q","type":"ChatInput","data":{}},{"id":"store","type":"FAISS","data":{}},{"id":"out","type":"ChatOutput","data":{}}],
		"edges":[{"source":"q","target":"store","targetHandle":"search_query"},{"source":"store","sourceHandle":"dataframe","target":"out"}]}`
	_, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(noEmb)), "q"))
	if !errors.As(err, &e) || e.Field != "nodes.store.embedding" {
		t.Errorf("no embeddings: got %v, want an error at nodes.store.embedding", err)
	}

	// Without a store configured.
	h.exec.Vectors = nil
	_, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(queryFlow, "FAISS"))), "q"))
	if !errors.As(err, &e) || e.Code != errs.Unprocessable {
		t.Errorf("no store: got %v, want unprocessable", err)
	}
}

// fakeOpenAIEmbeddings is OpenAI's /v1/embeddings as its wire format has
// it: it embeds each input as a bag of words of 16 dimensions and reports
// one prompt token per word.
type fakeOpenAIEmbeddings struct {
	mu       sync.Mutex
	requests []map[string]any
	reported int
}

func (f *fakeOpenAIEmbeddings) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string   `json:"model"`
		Input []string `json:"input"`
	}
	var raw map[string]any
	body := json.NewDecoder(r.Body)
	if r.URL.Path != "/v1/embeddings" || r.Header.Get("Authorization") != "Bearer sk-fake-embeddings-key" || body.Decode(&raw) != nil {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"message":"Unknown request","type":"invalid_request_error"}}`))
		return
	}
	b, _ := json.Marshal(raw)
	_ = json.Unmarshal(b, &req)
	type item struct {
		Object    string    `json:"object"`
		Index     int       `json:"index"`
		Embedding []float64 `json:"embedding"`
	}
	var data []item
	tokens := 0
	for i, s := range req.Input {
		vec := make([]float64, 16)
		words := strings.Fields(strings.ToLower(s))
		tokens += len(words)
		for _, w := range words {
			h := fnv.New32a()
			h.Write([]byte(strings.Trim(w, ".,;:?!")))
			vec[h.Sum32()%16]++
		}
		var n float64
		for _, x := range vec {
			n += x * x
		}
		for j := range vec {
			vec[j] /= math.Max(math.Sqrt(n), 1e-9)
		}
		data = append(data, item{Object: "embedding", Index: i, Embedding: vec})
	}
	f.mu.Lock()
	f.requests = append(f.requests, raw)
	f.reported += tokens
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data, "model": req.Model,
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
}

func TestOpenAIEmbeddingsSettleInTheLedger(t *testing.T) {
	fake := &fakeOpenAIEmbeddings{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	h := newHarness(t,
		llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderSimulated},
		llm.ModelConfig{Name: "text-embedding-3-small", Provider: llm.ProviderOpenAI, BaseURL: srv.URL + "/v1", APIKey: llm.NewSecret("sk-fake-embeddings-key"), InputPricePerMTok: 0.02},
		llm.ModelConfig{Name: "llama3", Provider: llm.ProviderOllama, BaseURL: "http://127.0.0.1:1"})
	h.exec.Vectors = h.store.Vectors(vector.Limits{})
	start := time.Now().Add(-time.Minute)
	res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ragFlow, "FAISS", ragDoc, 1))), "How are quota scopes arranged in a tree?"))
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := res.Outputs[0].Text; !strings.HasPrefix(got, "Quota scopes form a tree") {
		t.Errorf("got %q, want the chunk about quota scopes", got)
	}
	if len(fake.requests) != 2 {
		t.Fatalf("provider got %d requests, want 2 (the chunks, the question)", len(fake.requests))
	}
	if in, _ := fake.requests[0]["input"].([]any); len(in) != 4 || fake.requests[0]["model"] != "text-embedding-3-small" {
		t.Errorf("first request: got %v, want the 4 chunks for text-embedding-3-small", fake.requests[0])
	}
	if res.Usage.InputTokens != int64(fake.reported) || res.Usage.OutputTokens != 0 {
		t.Errorf("run usage: got %+v, want the %d prompt tokens the provider reported", res.Usage, fake.reported)
	}
	evs, err := h.store.UsageEvents(context.Background(), h.who.TenantID, start, time.Now().Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	var ledger int64
	var n int
	for _, ev := range evs {
		if ev.Kind == "embedding" {
			n++
			ledger += ev.InputTokens
			if ev.Model != "text-embedding-3-small" || ev.ProjectID != h.who.ProjectID || ev.OutputTokens != 0 || ev.CostMicros == 0 {
				t.Errorf("ledger event: got %+v, want the model, the project, input tokens priced", eventSummary(ev))
			}
		}
	}
	if n != 2 || ledger != int64(fake.reported) {
		t.Errorf("ledger: got %d embedding events of %d tokens, want 2 of %d", n, ledger, fake.reported)
	}
	if use := h.userUse(); use.TokensDay.Used == 0 {
		t.Errorf("the member's token counter did not move: %+v", use)
	}

	// A model the table lacks is named at the Embeddings node; a chat-only
	// provider cannot embed.
	for model, want := range map[string]string{"text-embedding-ada-999": "not in the model table", "llama3": "serves no embeddings"} {
		_, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(strings.Replace(jsonf(ragFlow, "FAISS", ragDoc, 1), "text-embedding-3-small", model, 1))), "q"))
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.emb.model" || !strings.Contains(e.Message, want) {
			t.Errorf("model %s: got %v, want unprocessable at nodes.emb.model (%s)", model, err, want)
		}
	}
}

func eventSummary(ev usage.Event) map[string]any {
	return map[string]any{"kind": ev.Kind, "model": ev.Model, "project": ev.ProjectID, "in": ev.InputTokens, "out": ev.OutputTokens, "cost": ev.CostMicros}
}

func TestEmbeddingsRefusedByTheTokenBudget(t *testing.T) {
	h := newHarness(t)
	h.exec.Vectors = vector.NewMemory(vector.Limits{})
	h.setUserLimits(`{"tokens": "5/day"}`)
	_, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ragFlow, "FAISS", ragDoc, 1))), "q"))
	var re *run.RunError
	if !errors.As(err, &re) || re.Status != run.StatusQuotaExceeded || re.NodeID != "store" {
		t.Fatalf("embedding 80 tokens on a budget of 5: got %v, want quota_exceeded at the store", err)
	}
}

func TestKnowledgeIngestionAndRetrieval(t *testing.T) {
	h := newHarness(t)
	h.exec.Vectors = h.store.Vectors(vector.Limits{})
	ingest := `{"nodes":[
		{"id":"doc","type":"TextInput","data":{"input_value":%q}},
		{"id":"split","type":"SplitText","data":{"chunk_size":130,"chunk_overlap":0,"separator":"\n"}},
		{"id":"kb","type":"KnowledgeIngestion","data":{"knowledge_base":"sluice-docs","column_config":[{"column_name":"text","vectorize":true,"identifier":true}]}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[
		{"source":"doc","target":"split"},
		{"source":"split","sourceHandle":"dataframe","target":"kb","targetHandle":"input_df"},
		{"source":"kb","sourceHandle":"dataframe_output","target":"out"}
	]}`
	for range 2 { // the second ingest finds every row stored
		res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ingest, ragDoc))), ""))
		if err != nil {
			t.Fatalf("ingest: %v", err)
		}
		if got := res.Outputs[0].Text; !strings.Contains(got, `"kb_name": "sluice-docs"`) || !strings.Contains(got, `"rows": 4`) {
			t.Errorf("ingest output: got %q", got)
		}
	}
	key := vector.Key{TenantID: h.who.TenantID, ProjectID: h.who.ProjectID, Collection: "knowledge/sluice-docs"}
	if info, _ := h.exec.Vectors.Info(context.Background(), key); info.Count != 4 {
		t.Errorf("knowledge base holds %d documents after two ingests of 4 rows, want 4 (duplicates skipped)", info.Count)
	}
	retrieve := `{"nodes":[
		{"id":"q","type":"TextInput","data":{"input_value":"Which model answers offline?"}},
		{"id":"kb","type":"KnowledgeBase","data":{"knowledge_base":"sluice-docs","top_k":2,"include_metadata":%t}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"q","target":"kb","targetHandle":"search_query"},{"source":"kb","sourceHandle":"retrieve_data","target":"out"}]}`
	res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(retrieve, true))), ""))
	if err != nil {
		t.Fatalf("retrieve: %v", err)
	}
	got := res.Outputs[0].Text
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "content") || !strings.Contains(lines[0], "_score") || !strings.Contains(lines[0], "_id") ||
		!strings.Contains(lines[2], "The simulated model answers offline") {
		t.Errorf("retrieve: got\n%s\nwant a table of 2 rows (content, _score, _id), the simulated model's chunk first", got)
	}
	res, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(retrieve, false))), ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Outputs[0].Text; strings.Contains(got, "_id") {
		t.Errorf("include_metadata false: got %q, want no metadata columns", got)
	}

	bad := strings.Replace(retrieve, "sluice-docs", "x", 1)
	_, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(bad, true))), ""))
	var e *errs.Error
	if !errors.As(err, &e) || e.Field != "nodes.kb.knowledge_base" {
		t.Errorf("a bad knowledge base name: got %v, want an error at nodes.kb.knowledge_base", err)
	}
	missing := strings.Replace(retrieve, "sluice-docs", "never-ingested", 1)
	_, err = h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(missing, true))), ""))
	if !errors.As(err, &e) || e.Field != "nodes.kb.knowledge_base" || e.Code != errs.Unprocessable {
		t.Errorf("an empty knowledge base: got %v, want unprocessable at nodes.kb.knowledge_base", err)
	}
}

// TestVectorStoreRAGStarter runs LangFlow's starter project Vector Store
// RAG, trimmed (testdata/vector-store-rag.json: FAISS in place of AstraDB,
// a Text Input in place of the File), end to end on the simulated models.
// The ingest and search halves share no edge, so the first run may search
// before it ingests; the second finds the document.
func TestVectorStoreRAGStarter(t *testing.T) {
	h := newHarness(t)
	h.exec.Vectors = h.store.Vectors(vector.Limits{})
	f := parseFlow(t, readFile(t, "testdata/vector-store-rag.json"))
	tweaks := map[string]map[string]any{ // numbers as JSON decodes them
		"SplitText-4s7Dt": {"chunk_size": 130.0, "chunk_overlap": 0.0},
		"FAISS-BteL9":     {"number_of_results": 2.0},
	}
	var res *run.Result
	for range 2 {
		job := h.job(f, "How are quota scopes arranged?")
		job.Tweaks = tweaks
		var err error
		if res, err = h.exec.Execute(context.Background(), job); err != nil {
			t.Fatalf("run: %v", err)
		}
	}
	var prompt string
	for _, tr := range res.Trace {
		if tr.NodeID == "Prompt-ML5XQ" {
			prompt = tr.OutputPreview
		}
	}
	if !strings.HasPrefix(prompt, "Quota scopes form a tree") || !strings.Contains(prompt, "Question: How are quota scopes arranged?") {
		t.Errorf("prompt: got %q, want the retrieved chunks first, the quota one nearest", prompt)
	}
	if len(res.Outputs) == 0 || res.Outputs[0].Text == "" || !res.Simulated {
		t.Errorf("outputs: got %+v, want the simulated model's answer", res.Outputs)
	}
}

// agentVectorFlow gives an Agent the FAISS store as a tool: LangFlow's
// search_documents.
const agentVectorFlow = `{"nodes":[
	{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"emb","type":"OpenAIEmbeddings","data":{"model":"text-embedding-3-small"}},
	{"id":"store","type":"FAISS","data":{"number_of_results":1}},
	{"id":"agent","type":"Agent","data":{"model_name":"gpt-4o-mini"}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
],"edges":[{"source":"in","target":"agent","targetHandle":"input_value"},
	{"source":"emb","sourceHandle":"embeddings","target":"store","targetHandle":"embedding"},
	{"source":"store","sourceHandle":"component_as_tool","target":"agent","targetHandle":"tools"},
	{"source":"agent","target":"out"}]}`

// TestVectorStoreAsAgentTool: a vector store in an Agent's tools searches
// the project's collection for the query the model asks.
func TestVectorStoreAsAgentTool(t *testing.T) {
	oai, seen := scriptedOpenAI(t, `{"search_query":"Which model answers offline for demos?"}`)
	h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: oai.URL, APIKey: llm.NewSecret("sk-test"), Default: true},
		llm.ModelConfig{Name: "text-embedding-3-small", Provider: llm.ProviderSimulated})
	h.exec.Vectors = h.store.Vectors(vector.Limits{})
	if _, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(jsonf(ragFlow, "FAISS", ragDoc, 1))), "x")); err != nil {
		t.Fatalf("ingest run: %v", err)
	}
	res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(agentVectorFlow)), "Which model answers offline?"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Outputs[0].Text != "Nielsen and Chuang wrote it." {
		t.Errorf("output: got %q, want the scripted model's answer", res.Outputs[0].Text)
	}
	if len(*seen) != 2 {
		t.Fatalf("model calls: got %d, want 2", len(*seen))
	}
	second := (*seen)[1]
	last, _ := second[len(second)-1].(map[string]any)
	if last["role"] != "tool" || !strings.Contains(fmt.Sprint(last["content"]), "The simulated model answers offline") || strings.Contains(fmt.Sprint(last["content"]), "Quota") {
		t.Errorf("tool result: got %v, want the one nearest chunk", last)
	}
}
