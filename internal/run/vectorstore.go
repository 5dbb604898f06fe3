package run

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// The vector-store components (FAISS, Chroma) and the Knowledge components
// keep their documents in the executor's vector.Store, in collections of
// the run's tenant and project: a flow never reads another project's
// vectors, whatever collection name it gives. Each kind of component has
// its own namespace of collection names ("faiss/…", "chroma/…",
// "knowledge/…"), as LangFlow keeps FAISS indexes, Chroma collections and
// knowledge bases apart.

// vectorKind is what differs between the vector-store components.
type vectorKind struct {
	namespace string
	// nameField names the collection; defaultName is LangFlow's default.
	nameField, defaultName string
	// defaultK is number_of_results' default.
	defaultK int
	// replace: ingesting rebuilds the collection (FAISS.from_documents
	// then save_local); else documents are added, duplicates skipped
	// unless allow_duplicates (Chroma).
	replace bool
}

var vectorKinds = map[string]vectorKind{
	"FAISS":  {namespace: "faiss", nameField: "index_name", defaultName: "langflow_index", defaultK: 4, replace: true},
	"Chroma": {namespace: "chroma", nameField: "collection_name", defaultName: "langflow", defaultK: 10},
}

// maxCollectionName bounds a collection's name.
const maxCollectionName = 200

// vectorStore is LangFlow's FAISS and Chroma components (an
// LCVectorStoreComponent): the Data and DataFrames on ingest_data are
// embedded with the Embeddings on embedding and stored, then search_query,
// when there is one, is embedded the same way and the number_of_results
// nearest documents (cosine similarity) are the outputs search_results (a
// list of Data: each document's fields, then its text) and dataframe (the
// same as a DataFrame). Rows with no text are not stored. persist_directory
// and the Chroma server settings are ignored: the store is Sluice's.
func (s *state) vectorStore(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	kind := vectorKinds[n.Type]
	fail := func(field, format string, args ...any) error {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field, "node %s (%s): "+format, append([]any{n.ID, n.Type}, args...)...)
	}
	if _, err := s.vectorCaller(n, kind.nameField); err != nil {
		return err
	}
	name := strings.TrimSpace(s.param(n, kind.nameField).String())
	if name == "" {
		name = kind.defaultName
	}
	if len(name) > maxCollectionName {
		return fail(kind.nameField, "the name is %d bytes long; at most %d", len(name), maxCollectionName)
	}
	var ref *embedRef
	for _, field := range []string{"embedding", "embedding_model"} {
		if v, ok := s.in(n, field); ok && v.embed != nil {
			ref = v.embed
			break
		}
	}
	if ref == nil {
		return fail("embedding", "connect an Embeddings component (OpenAI Embeddings or Embedding Model) to embedding")
	}
	collection := kind.namespace + "/" + name
	docs, err := s.ingestDocs(n, "ingest_data", "text")
	if err != nil {
		return err
	}
	if len(docs) > 0 || (kind.replace && len(s.inputs[n.ID]["ingest_data"]) > 0) {
		c := VectorCall{Op: VectorIngest, Collection: collection, Embed: s.embedSpec(ref), Docs: docs,
			Replace: kind.replace, SkipDuplicates: !kind.replace}
		if v, ok := s.param(n, "allow_duplicates").Bool(); ok && v {
			c.SkipDuplicates = false
		}
		if _, err := s.vectors(ctx, n, "ingest_data", c, t); err != nil {
			return err
		}
	}
	rows, err := s.vectorSearch(ctx, n, collection, ref, s.text(n, "search_query"), t)
	if err != nil {
		return err
	}
	s.setOut(n.ID, "search_results", dataValue(&table{kind: dataList, rows: rows}))
	s.setOut(n.ID, "dataframe", dataValue(&table{kind: dataFrame, rows: rows}))
	return nil
}

// vectorSearch runs a vector-store node's search for query (none when it
// is blank): its number_of_results nearest documents, as rows.
func (s *state) vectorSearch(ctx context.Context, n *flow.Node, collection string, ref *embedRef, query string, t *NodeTrace) ([]row, error) {
	if strings.TrimSpace(query) == "" {
		return nil, nil
	}
	k := vectorKinds[n.Type].defaultK
	if v, ok := s.param(n, "number_of_results").Int(); ok {
		k = v
	}
	if k < 1 {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".number_of_results", "node %s (%s): number_of_results must be at least 1, not %d", n.ID, n.Type, k)
	}
	r, err := s.vectors(ctx, n, "search_query", VectorCall{Op: VectorSearch, Collection: collection, Embed: s.embedSpec(ref), Query: query, K: k}, t)
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, h := range r.Hits {
		r, err := docRow(h.Meta)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r.set("text", h.Text))
	}
	return rows, nil
}

// vectorTool is a vector-store node in an Agent's tools, as LangFlow's
// search_documents: the query the model asks, against the node's
// collection and embeddings (it ingests nothing).
func (s *state) vectorTool(n *flow.Node) func(context.Context, map[string]any) (string, error) {
	return func(ctx context.Context, args map[string]any) (string, error) {
		kind := vectorKinds[n.Type]
		name := strings.TrimSpace(s.param(n, kind.nameField).String())
		if name == "" {
			name = kind.defaultName
		}
		var ref *embedRef
		for _, field := range []string{"embedding", "embedding_model"} {
			if v, ok := s.in(n, field); ok && v.embed != nil {
				ref = v.embed
				break
			}
		}
		if ref == nil {
			return "", errs.Field(errs.Unprocessable, "nodes."+n.ID+".embedding", "node %s (%s): connect an Embeddings component to embedding", n.ID, n.Type)
		}
		query, _ := args["search_query"].(string)
		rows, err := s.vectorSearch(ctx, n, kind.namespace+"/"+name, ref, query, &NodeTrace{})
		if err != nil {
			return "", err
		}
		var texts []string
		for _, r := range rows {
			for _, f := range r {
				if f.name == "text" {
					texts = append(texts, fmt.Sprint(f.value))
				}
			}
		}
		if len(texts) == 0 {
			return "No documents found.", nil
		}
		return strings.Join(texts, "\n\n"), nil
	}
}

// ingestDocs reads the rows on an input (Data, lists of Data, DataFrames,
// Messages) as documents: the text under textKey, the other fields as
// metadata. Rows without text are left out.
func (s *state) ingestDocs(n *flow.Node, input, textKey string) ([]VectorDoc, error) {
	var docs []VectorDoc
	for _, v := range s.inputs[n.ID][input] {
		for _, r := range asTable(v).rows {
			tv, ok := r.get(textKey)
			if !ok || tv == nil {
				continue
			}
			text := pyStr(tv)
			if strings.TrimSpace(text) == "" {
				continue
			}
			meta, err := rowMeta(r.without(textKey))
			if err != nil {
				return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+input, "node %s: %v", n.ID, err)
			}
			docs = append(docs, VectorDoc{Text: text, Meta: meta})
		}
	}
	return docs, nil
}

// baseModel is a served model's name without the trace's note.
func baseModel(served string) string {
	name, _, _ := strings.Cut(served, " (")
	return name
}

// vectorError names the node and field in a store's refusal. Errors that
// name their own field (a model an Embeddings node chose), a run's end
// (timeout, cancel) and internal errors pass as they are.
func vectorError(n *flow.Node, field string, err error) error {
	var e *errs.Error
	var re *RunError
	if errors.As(err, &re) {
		return err
	}
	if errors.As(err, &e) && e.Code != errs.Internal && e.Field == "" {
		return &errs.Error{Code: e.Code, Field: "nodes." + n.ID + "." + field, Message: fmt.Sprintf("node %s (%s): %s", n.ID, n.Type, e.Message), Err: e.Err}
	}
	return err
}

// rowMeta encodes a row's fields, in order, as the store's metadata: a
// JSON list of [name, value] pairs.
func rowMeta(r row) (json.RawMessage, error) {
	pairs := make([][2]any, len(r))
	for i, f := range r {
		pairs[i] = [2]any{f.name, f.value}
	}
	b, err := json.Marshal(pairs)
	if err != nil {
		return nil, fmt.Errorf("a field of a row cannot be stored: %w", err)
	}
	return b, nil
}

// docRow decodes a document's metadata (rowMeta) into a row.
func docRow(meta json.RawMessage) (row, error) {
	var pairs [][2]json.RawMessage
	if len(meta) == 0 || string(meta) == "null" {
		return row{}, nil
	}
	if err := json.Unmarshal(meta, &pairs); err != nil {
		return nil, errs.Wrap(err, "decode a stored document's fields")
	}
	r := make(row, 0, len(pairs)+1)
	for _, p := range pairs {
		var name string
		var v any
		if err := json.Unmarshal(p[0], &name); err != nil {
			return nil, errs.Wrap(err, "decode a stored document's fields")
		}
		if err := json.Unmarshal(p[1], &v); err != nil {
			return nil, errs.Wrap(err, "decode a stored document's fields")
		}
		r = append(r, field{name, v})
	}
	return r, nil
}

// sha256Hex is the hex SHA-256 of s (LangFlow's knowledge row ids).
func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// kbName is LangFlow's rule for knowledge base names (Chroma's for
// collections): 3 to 63 letters, digits, '_' or '-', starting and ending
// with a letter or digit.
var kbName = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9_-]{1,61})[A-Za-z0-9]$`)

// knowledgeName reads and checks a Knowledge component's knowledge_base.
func (s *state) knowledgeName(n *flow.Node) (string, error) {
	name := strings.TrimSpace(s.param(n, "knowledge_base").String())
	if name == "" {
		return "", errs.Field(errs.Unprocessable, "nodes."+n.ID+".knowledge_base", "node %s (%s): choose a knowledge base (knowledge_base)", n.ID, n.Type)
	}
	if !kbName.MatchString(name) {
		return "", errs.Field(errs.Unprocessable, "nodes."+n.ID+".knowledge_base",
			"node %s (%s): knowledge base name %q must be 3 to 63 letters, digits, '_' or '-', starting and ending with a letter or digit", n.ID, n.Type, name)
	}
	if _, err := s.vectorCaller(n, "knowledge_base"); err != nil {
		return "", err
	}
	return name, nil
}

// columnConfig is one row of KnowledgeIngestion's column_config.
type columnConfig struct {
	name                 string
	vectorize, identifer bool
}

// truthy reads LangFlow's table booleans (true or "True").
func truthy(v any) bool {
	switch v := v.(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// knowledgeIngestion is LangFlow's KnowledgeIngestion: the rows on
// input_df (a DataFrame, Data or Message) become documents of the
// knowledge base: the columns column_config marks vectorize, joined by a
// space, are the text embedded, every other column a field kept as text,
// and "_id" the SHA-256 of the identifier columns (else of the text).
// Unless allow_duplicates, a row whose document the knowledge base has is
// skipped. The embeddings model is the knowledge base's (the one it was
// created with), else the node's embedding_model, else the run's default
// model. The output dataframe_output describes what was stored.
func (s *state) knowledgeIngestion(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	name, err := s.knowledgeName(n)
	if err != nil {
		return err
	}
	fail := func(field, format string, args ...any) error {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field, "node %s (KnowledgeIngestion): "+format, append([]any{n.ID}, args...)...)
	}
	vs := s.inputs[n.ID]["input_df"]
	if len(vs) == 0 {
		return fail("input_df", "connect the rows to ingest to input_df")
	}
	var rows []row
	for _, v := range vs {
		rows = append(rows, asTable(v).rows...)
	}
	cols := map[string]bool{}
	var colNames []string
	for _, r := range rows {
		for _, f := range r {
			if !cols[f.name] {
				cols[f.name] = true
				colNames = append(colNames, f.name)
			}
		}
	}
	config := []columnConfig{{name: "text", vectorize: true, identifer: true}}
	if p := s.param(n, "column_config"); !p.Empty() {
		list, ok := p.Value.([]any)
		if !ok {
			return fail("column_config", "column_config must be a table of column_name, vectorize, identifier")
		}
		config = config[:0]
		for _, item := range list {
			m, ok := item.(map[string]any)
			if !ok {
				return fail("column_config", "column_config must be a table of column_name, vectorize, identifier")
			}
			c := columnConfig{vectorize: truthy(m["vectorize"]), identifer: truthy(m["identifier"])}
			c.name, _ = m["column_name"].(string)
			config = append(config, c)
		}
	}
	if len(config) == 0 {
		return fail("column_config", "column configuration cannot be empty")
	}
	content, ident := map[string]bool{}, []string{}
	for _, c := range config {
		if !cols[c.name] {
			return fail("column_config", "column %q not found in the input; available columns: %v", c.name, colNames)
		}
		if c.vectorize {
			content[c.name] = true
		} else if c.identifer {
			ident = append(ident, c.name)
		}
	}
	var docs []VectorDoc
	for _, r := range rows {
		var parts, ids []string
		for _, c := range config {
			if v, ok := r.get(c.name); ok && v != nil && content[c.name] {
				parts = append(parts, pyStr(v))
			}
		}
		for _, c := range ident {
			if v, ok := r.get(c); ok && v != nil {
				ids = append(ids, pyStr(v))
			}
		}
		text := strings.Join(parts, " ")
		idText := text
		if len(ident) > 0 {
			idText = strings.Join(ids, " ")
		}
		meta := row{}
		for _, f := range r {
			if !content[f.name] && f.value != nil {
				meta = append(meta, field{f.name, pyStr(f.value)})
			}
		}
		meta = append(meta, field{"_id", sha256Hex(idText)})
		if strings.TrimSpace(text) == "" {
			continue
		}
		b, err := rowMeta(meta)
		if err != nil {
			return fail("input_df", "%v", err)
		}
		docs = append(docs, VectorDoc{Text: text, Meta: b})
	}
	collection := "knowledge/" + name
	r, err := s.vectors(ctx, n, "knowledge_base", VectorCall{Op: VectorInfo, Collection: collection}, t)
	if err != nil {
		return err
	}
	info := r.Info
	ref := &embedRef{model: info.Model}
	if info.Count == 0 {
		ref.model = s.modelName(n)
		if m, ok := s.param(n, "embedding_model").Value.([]any); ok && len(m) > 0 {
			if mm, ok := m[0].(map[string]any); ok {
				ref.model, _ = mm["name"].(string)
			}
		} else if v := s.param(n, "embedding_model").String(); v != "" {
			ref.model = v
		}
	}
	c := VectorCall{Op: VectorIngest, Collection: collection, Embed: s.embedSpec(ref), Docs: docs, SkipDuplicates: true}
	if v, ok := s.param(n, "allow_duplicates").Bool(); ok && v {
		c.SkipDuplicates = false
	}
	if _, err := s.vectors(ctx, n, "input_df", c, t); err != nil {
		return err
	}
	vectorized, identifiers := []any{}, []any{}
	columns := []any{}
	for _, c := range config {
		columns = append(columns, map[string]any{"name": c.name, "vectorize": c.vectorize, "identifier": c.identifer})
		if c.vectorize {
			vectorized = append(vectorized, c.name)
		}
		if c.identifer {
			identifiers = append(identifiers, c.name)
		}
	}
	meta := map[string]any{
		"total_columns": float64(len(colNames)), "mapped_columns": float64(len(config)), "unmapped_columns": float64(len(colNames) - len(config)),
		"columns": columns, "summary": map[string]any{"vectorized_columns": vectorized, "identifier_columns": identifiers},
	}
	out := row{{"kb_name", name}, {"rows", float64(len(rows))}, {"column_metadata", meta},
		{"config_columns", float64(len(config))}, {"timestamp", s.e.now().UTC().Format("2006-01-02T15:04:05.000000+00:00")}}
	s.setOut(n.ID, "dataframe_output", dataValue(&table{kind: oneData, rows: []row{out}}))
	return nil
}

// knowledgeRetrieval is LangFlow's KnowledgeBase (Knowledge Retrieval):
// with a search_query, the top_k documents of the knowledge base nearest
// to it (embedded with the knowledge base's model), each a row of its
// "content", "_score" (the cosine similarity; LangFlow's is the negated
// Chroma distance) and, when include_metadata (the default), its fields;
// without one, the first top_k documents, unscored. include_embeddings
// adds "_embeddings". The output is the DataFrame retrieve_data.
func (s *state) knowledgeRetrieval(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	name, err := s.knowledgeName(n)
	if err != nil {
		return err
	}
	collection := "knowledge/" + name
	ir, err := s.vectors(ctx, n, "knowledge_base", VectorCall{Op: VectorInfo, Collection: collection}, t)
	if err != nil {
		return err
	}
	info := ir.Info
	if info.Count == 0 {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".knowledge_base",
			"node %s (KnowledgeBase): knowledge base %q has no documents in this project; ingest some first (KnowledgeIngestion)", n.ID, name)
	}
	k := 5
	if v, ok := s.param(n, "top_k").Int(); ok {
		k = v
	}
	if k < 1 {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".top_k", "node %s (KnowledgeBase): top_k must be at least 1, not %d", n.ID, k)
	}
	includeMeta := true
	if v, ok := s.param(n, "include_metadata").Bool(); ok {
		includeMeta = v
	}
	includeEmb, _ := s.param(n, "include_embeddings").Bool()
	query := s.text(n, "search_query")
	c := VectorCall{Op: VectorList, Collection: collection, K: k, WithVectors: includeEmb}
	if strings.TrimSpace(query) != "" {
		c.Op, c.Query, c.Embed = VectorSearch, query, EmbedSpec{Model: info.Model}
	}
	r, err := s.vectors(ctx, n, "search_query", c, t)
	if err != nil {
		return err
	}
	rows := make([]row, 0, len(r.Hits))
	for _, h := range r.Hits {
		r := row{{"content", h.Text}}
		if strings.TrimSpace(query) != "" {
			r = append(r, field{"_score", h.Score})
		}
		if includeMeta {
			m, err := docRow(h.Meta)
			if err != nil {
				return err
			}
			for _, f := range m {
				r = r.set(f.name, f.value)
			}
		}
		if includeEmb {
			vec := make([]any, len(h.Vector))
			for i, x := range h.Vector {
				vec[i] = float64(x)
			}
			r = r.set("_embeddings", vec)
		}
		rows = append(rows, r)
	}
	s.setOut(n.ID, "retrieve_data", dataValue(&table{kind: dataFrame, rows: rows}))
	return nil
}
