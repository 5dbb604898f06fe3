package flow

// Component describes a component type Sluice implements natively: the
// inputs it reads, the outputs it produces, and what kind of thing it is.
// Validation checks every node and edge against it; the executor dispatches
// on Type.
type Component struct {
	// Type is the canonical type name, the key in Components.
	Type string
	// Aliases are other type names that mean this component: older LangFlow
	// names, LangChain class names from 2023 exports, compact-form names.
	Aliases []string
	// Inputs are the fields the executor reads, in order of preference for
	// edges whose format does not name the input. Fields absent from this
	// list may appear in Node.Params; they are carried but ignored.
	Inputs []Input
	// Outputs are the values the component produces. A component in tool
	// mode also has the output ToolOutput.
	Outputs []Output
	// IsModel marks a language-model provider: it calls a model (text_output)
	// or hands a configured model to another component (model_output).
	IsModel bool
	// IsTool marks a component an Agent may call through ToolOutput.
	IsTool bool
	// IsInput marks a component that receives the run's input.
	IsInput bool
	// IsOutput marks a component whose value is part of the run's result.
	IsOutput bool
	// IsCustom marks user-supplied code (Node.Code). It accepts any input and
	// output name; the executor must refuse it or run it sandboxed.
	IsCustom bool
	// ToolParams marks a component whose fields beyond Inputs are the
	// parameters of the tool it calls (MCPTools: the selected MCP tool's
	// input schema, as LangFlow adds them to the node): each takes a
	// Message edge or a value.
	ToolParams bool
	// AllowsCycles marks a loop component: an edge from inside a cycle back
	// into it is a feedback edge, allowed by Validate and ignored by Order.
	AllowsCycles bool
}

// Input is one field of a component.
type Input struct {
	Name string
	// Required inputs need an incoming edge or (unless EdgeOnly) a non-empty
	// parameter value.
	Required bool
	// Edge reports that the input accepts an incoming edge.
	Edge bool
	// EdgeOnly inputs take their value only from an edge (a model, a prompt
	// template, a memory, tools). In the compact form a parameter value
	// naming a node on such an input is an edge.
	EdgeOnly bool
	// List inputs accept several edges (Agent.tools); others at most one.
	List bool
	// Types are the value types accepted over an edge, in order of
	// preference (see Output.Type).
	Types []string
}

// Output is one value a component produces.
type Output struct {
	Name string
	// Type is the value type: "Message" (text with metadata), "Data",
	// "DataFrame", "LanguageModel" (a configured model, not a reply),
	// "PromptTemplate" (an unrendered template whose free variables the
	// receiving chain fills), "Memory" (a conversation memory), "Tool".
	Type string
}

// Canonical names of the components the validator and executor treat
// specially.
const (
	TypePrompt          = "Prompt"
	TypeLLMChain        = "LLMChain"
	TypeAgent           = "Agent"
	TypeCustomComponent = "CustomComponent"
)

// ToolOutput is the output through which a component in tool mode is handed
// to an Agent's "tools" input.
const ToolOutput = "component_as_tool"

// Value types carried over edges.
const (
	typeMessage   = "Message"
	typeData      = "Data"
	typeDataFrame = "DataFrame"
	typeModel     = "LanguageModel"
	typeTemplate  = "PromptTemplate"
	typeMemory    = "Memory"
	typeTool      = "Tool"
	// typeEmbeddings is an embeddings model handed to a vector store.
	typeEmbeddings = "Embeddings"
)

// Lookup returns the component for a canonical type name or alias, or nil.
func Lookup(typ string) *Component {
	if typ == "" {
		return nil
	}
	if c, ok := Components[typ]; ok {
		return c
	}
	for _, c := range Components {
		for _, a := range c.Aliases {
			if a == typ {
				return c
			}
		}
	}
	return nil
}

// Input returns the named input.
func (c *Component) Input(name string) (Input, bool) {
	for _, in := range c.Inputs {
		if in.Name == name {
			return in, true
		}
	}
	return Input{}, false
}

// Output returns the named output.
func (c *Component) Output(name string) (Output, bool) {
	for _, out := range c.Outputs {
		if out.Name == name {
			return out, true
		}
	}
	return Output{}, false
}

// helpers that keep the catalog readable
func msg(name string) Input { return Input{Name: name, Edge: true, Types: []string{typeMessage}} }
func lit(name string) Input { return Input{Name: name} }
func req(in Input) Input    { in.Required = true; return in }

// modelInputs are the fields shared by every language-model provider.
var modelInputs = []Input{
	msg("input_value"),
	msg("system_message"),
	lit("temperature"),
	lit("max_tokens"),
	lit("stream"),
}

// modelOutputs returns the outputs shared by every language-model provider.
func modelOutputs() []Output {
	return []Output{
		{Name: "text_output", Type: typeMessage},
		{Name: "model_output", Type: typeModel},
	}
}

func withInputs(base []Input, more ...Input) []Input {
	return append(append([]Input(nil), base...), more...)
}

// vectorStoreInputs are LangFlow's LCVectorStoreComponent inputs, with the
// field that names the collection.
func vectorStoreInputs(nameField string) []Input {
	return []Input{
		lit(nameField),
		lit("persist_directory"),
		{Name: "ingest_data", Edge: true, List: true, Types: []string{typeData, typeDataFrame}},
		msg("search_query"),
		lit("should_cache_vector_store"),
		{Name: "embedding", Edge: true, EdgeOnly: true, Types: []string{typeEmbeddings}},
		lit("number_of_results"),
	}
}

// vectorStoreOutputs are LangFlow's LCVectorStoreComponent outputs.
func vectorStoreOutputs() []Output {
	return []Output{
		{Name: "search_results", Type: typeData},
		{Name: "dataframe", Type: typeDataFrame},
	}
}

// chatFields are the message-metadata fields of ChatInput and ChatOutput.
var chatFields = []Input{
	lit("sender"),
	msg("sender_name"),
	msg("session_id"),
	msg("context_id"),
	lit("should_store_message"),
	msg("background_color"),
	msg("chat_icon"),
	msg("text_color"),
}

// Components is the catalog, keyed by canonical type. Treat it as read-only.
var Components = map[string]*Component{
	"ChatInput": {
		Type:    "ChatInput",
		Inputs:  withInputs([]Input{msg("input_value"), lit("files")}, chatFields...),
		Outputs: []Output{{Name: "message", Type: typeMessage}},
		IsInput: true,
	},
	"TextInput": {
		Type:    "TextInput",
		Inputs:  []Input{msg("input_value")},
		Outputs: []Output{{Name: "text", Type: typeMessage}},
		IsInput: true,
	},
	"ChatOutput": {
		Type: "ChatOutput",
		Inputs: withInputs([]Input{
			req(Input{Name: "input_value", Edge: true, Types: []string{typeMessage, typeData, typeDataFrame}}),
			msg("data_template"),
			lit("clean_data"),
		}, chatFields...),
		Outputs:  []Output{{Name: "message", Type: typeMessage}},
		IsOutput: true,
	},
	"TextOutput": {
		// As in LangFlow, the text may be the node's own value instead of
		// an edge's (a fixed answer, or one set by a tweak).
		Type:     "TextOutput",
		Inputs:   []Input{msg("input_value")},
		Outputs:  []Output{{Name: "text", Type: typeMessage}},
		IsOutput: true,
	},
	TypePrompt: {
		// Prompt also accepts an edge into each variable of its template.
		Type:    TypePrompt,
		Aliases: []string{"PromptTemplate"},
		Inputs: []Input{
			req(lit("template")),
			msg("tool_placeholder"),
			lit("mode"),
			lit("use_double_brackets"),
		},
		Outputs: []Output{
			{Name: "prompt", Type: typeMessage},
			{Name: "template", Type: typeTemplate},
		},
	},
	"LanguageModelComponent": {
		Type:    "LanguageModelComponent",
		Aliases: []string{"LanguageModel"},
		Inputs: withInputs(modelInputs,
			Input{Name: "model", Edge: true, Types: []string{typeModel}},
			lit("provider"),
			lit("model_name"),
			lit("api_key"),
			msg("ollama_base_url"),
			lit("base_url_ibm_watsonx"),
			lit("project_id"),
		),
		Outputs: modelOutputs(),
		IsModel: true,
	},
	"OpenAIModel": {
		Type:    "OpenAIModel",
		Aliases: []string{"OpenAIModelComponent", "OpenAI", "ChatOpenAI"},
		Inputs: withInputs(modelInputs,
			lit("model_name"),
			lit("openai_api_key"),
			lit("api_key"),
			lit("openai_api_base"),
			lit("seed"),
			lit("json_mode"),
			lit("model_kwargs"),
			lit("top_p"),
		),
		Outputs: modelOutputs(),
		IsModel: true,
	},
	"HuggingFaceHub": {
		Type:    "HuggingFaceHub",
		Aliases: []string{"HuggingFaceModel"},
		Inputs: withInputs(modelInputs,
			lit("model"),
			lit("repo_id"),
			lit("model_id"),
			lit("huggingfacehub_api_token"),
			lit("task"),
			lit("model_kwargs"),
		),
		Outputs: modelOutputs(),
		IsModel: true,
	},
	"OllamaModel": {
		Type:    "OllamaModel",
		Aliases: []string{"Ollama", "ChatOllama"},
		Inputs: withInputs(modelInputs,
			lit("base_url"),
			lit("model_name"),
			lit("model"),
			lit("format"),
		),
		Outputs: modelOutputs(),
		IsModel: true,
	},
	TypeLLMChain: {
		// The chain renders its prompt template with the run's input: the
		// template's free variables are the chain's input keys.
		Type: TypeLLMChain,
		Inputs: []Input{
			req(Input{Name: "prompt", Edge: true, EdgeOnly: true, Types: []string{typeTemplate, typeMessage}}),
			req(Input{Name: "llm", Edge: true, EdgeOnly: true, Types: []string{typeModel}}),
			{Name: "memory", Edge: true, EdgeOnly: true, Types: []string{typeMemory}},
			msg("input_value"),
			lit("output_key"),
			lit("verbose"),
		},
		Outputs: []Output{{Name: "text", Type: typeMessage}},
	},
	"Memory": {
		Type:    "Memory",
		Aliases: []string{"ConversationBufferMemory"},
		Inputs: []Input{
			lit("mode"),
			msg("message"),
			{Name: "memory", Edge: true, EdgeOnly: true, Types: []string{typeMemory}},
			lit("n_messages"),
			lit("order"),
			lit("sender"),
			lit("sender_type"),
			msg("sender_name"),
			msg("session_id"),
			msg("context_id"),
			msg("template"),
			lit("memory_key"),
			lit("input_key"),
			lit("output_key"),
			lit("return_messages"),
		},
		Outputs: []Output{
			{Name: "messages_text", Type: typeMessage},
			{Name: "messages", Type: typeData},
			{Name: "dataframe", Type: typeDataFrame},
			{Name: "memory", Type: typeMemory},
		},
	},
	TypeAgent: {
		Type: TypeAgent,
		Inputs: []Input{
			msg("input_value"),
			msg("system_prompt"),
			{Name: "tools", Edge: true, EdgeOnly: true, List: true, Types: []string{typeTool}},
			{Name: "model", Edge: true, Types: []string{typeModel}},
			{Name: "memory", Edge: true, EdgeOnly: true, Types: []string{typeMemory}},
			msg("agent_description"),
			msg("format_instructions"),
			msg("context_id"),
			lit("agent_llm"),
			lit("model_name"),
			lit("api_key"),
			lit("temperature"),
			lit("max_iterations"),
			lit("n_messages"),
			lit("output_schema"),
			lit("add_current_date_tool"),
			lit("handle_parsing_errors"),
			lit("verbose"),
		},
		Outputs: []Output{
			{Name: "response", Type: typeMessage},
			{Name: "structured_response", Type: typeData},
		},
	},
	"CalculatorComponent": {
		Type:    "CalculatorComponent",
		Aliases: []string{"Calculator"},
		Inputs:  []Input{msg("expression"), lit("tools_metadata")},
		Outputs: []Output{{Name: "result", Type: typeData}},
		IsTool:  true,
	},
	"URLComponent": {
		Type:    "URLComponent",
		Aliases: []string{"URL"},
		Inputs: []Input{
			msg("urls"),
			lit("max_depth"),
			lit("prevent_outside"),
			lit("use_async"),
			lit("format"),
			lit("timeout"),
			{Name: "headers", Edge: true, Types: []string{typeDataFrame}},
			lit("filter_text_html"),
			lit("continue_on_failure"),
			lit("check_response_status"),
			lit("autoset_encoding"),
			lit("tools_metadata"),
		},
		Outputs: []Output{
			{Name: "page_results", Type: typeDataFrame},
			{Name: "raw_results", Type: typeMessage},
			{Name: "data", Type: typeData},
			{Name: "text", Type: typeMessage},
			{Name: "dataframe", Type: typeDataFrame},
		},
		IsTool: true,
	},
	"MCPTools": {
		// The server is the operator's (mcp_servers), chosen by name; the
		// selected tool's parameters are fields of their own (ToolParams).
		Type:    "MCPTools",
		Aliases: []string{"MCPToolsComponent"},
		Inputs: []Input{
			lit("mcp_server"),
			lit("tool"),
			lit("use_cache"),
			lit("verify_ssl"),
			lit("headers"),
			lit("tool_execution_timeout"),
			lit("tool_placeholder"),
			lit("tools_metadata"),
		},
		Outputs:    []Output{{Name: "response", Type: typeDataFrame}},
		IsTool:     true,
		ToolParams: true,
	},
	"APIRequest": {
		Type:    "APIRequest",
		Aliases: []string{"APIRequestComponent"},
		Inputs: []Input{
			msg("url_input"),
			msg("urls"),
			msg("curl_input"),
			lit("method"),
			lit("mode"),
			{Name: "headers", Edge: true, Types: []string{typeData, typeDataFrame}},
			{Name: "body", Edge: true, Types: []string{typeData, typeDataFrame}},
			{Name: "query_params", Edge: true, Types: []string{typeData}},
			lit("timeout"),
			lit("follow_redirects"),
			lit("save_to_file"),
			lit("include_httpx_metadata"),
			lit("tools_metadata"),
		},
		Outputs: []Output{
			{Name: "data", Type: typeData},
			{Name: "dataframe", Type: typeDataFrame},
		},
		IsTool: true,
	},
	"TavilySearchComponent": {
		// The key is the server's (tools.tavily), never the node's.
		Type:    "TavilySearchComponent",
		Aliases: []string{"TavilySearch", "TavilySearchAPI"},
		Inputs: []Input{
			lit("api_key"),
			msg("query"),
			lit("search_depth"),
			lit("chunks_per_source"),
			lit("topic"),
			lit("days"),
			lit("max_results"),
			lit("include_answer"),
			lit("time_range"),
			lit("include_images"),
			msg("include_domains"),
			msg("exclude_domains"),
			lit("include_raw_content"),
			lit("tools_metadata"),
		},
		Outputs: []Output{
			{Name: "dataframe", Type: typeDataFrame},
			{Name: "data", Type: typeData},
			{Name: "text", Type: typeMessage},
		},
		IsTool: true,
	},
	"SearchComponent": {
		// SearchApi; the key is the server's (tools.searchapi).
		Type:    "SearchComponent",
		Aliases: []string{"SearchAPI", "SearchApi", "SearchAPIComponent"},
		Inputs: []Input{
			lit("engine"),
			lit("api_key"),
			msg("input_value"),
			lit("search_params"),
			lit("max_results"),
			lit("max_snippet_length"),
			lit("tools_metadata"),
		},
		Outputs: []Output{
			{Name: "dataframe", Type: typeDataFrame},
			{Name: "data", Type: typeData},
			{Name: "text", Type: typeMessage},
		},
		IsTool: true,
	},
	"ArXivComponent": {
		Type:    "ArXivComponent",
		Aliases: []string{"ArXiv", "arXiv"},
		Inputs: []Input{
			msg("search_query"),
			lit("search_type"),
			lit("max_results"),
			lit("tools_metadata"),
		},
		Outputs: []Output{
			{Name: "dataframe", Type: typeDataFrame},
			{Name: "data", Type: typeData},
		},
		IsTool: true,
	},
	"File": {
		// The file itself arrives at run time (upload or tweak of "path");
		// an export's path is usually empty.
		Type: "File",
		Inputs: []Input{
			lit("path"),
			{Name: "file_path", Edge: true, Types: []string{typeData, typeMessage}},
			lit("separator"),
			lit("silent_errors"),
			lit("delete_server_file_after_processing"),
			lit("ignore_unsupported_extensions"),
			lit("ignore_unspecified_files"),
			lit("storage_location"),
			lit("advanced_mode"),
			msg("doc_key"),
			lit("markdown"),
		},
		Outputs: []Output{
			{Name: "message", Type: typeMessage},
			{Name: "dataframe", Type: typeDataFrame},
			{Name: "json", Type: typeData},
			{Name: "data", Type: typeData},
			{Name: "path", Type: typeMessage},
		},
	},
	"SaveToFile": {
		// LangFlow's Write File: saves its input in the project's file
		// storage ("Local"); older exports name the file file_path and
		// the format file_format.
		Type:    "SaveToFile",
		Aliases: []string{"SaveToFileComponent"},
		Inputs: []Input{
			req(Input{Name: "input", Edge: true, Types: []string{typeData, typeDataFrame, typeMessage}}),
			msg("file_name"),
			lit("file_path"),
			lit("local_format"),
			lit("file_format"),
			lit("storage_location"),
			lit("append_mode"),
		},
		Outputs: []Output{{Name: "message", Type: typeMessage}},
	},
	"ParserComponent": {
		// LangFlow's Parser. The oldest exports call the template "format".
		Type:    "ParserComponent",
		Aliases: []string{"parser"},
		Inputs: []Input{
			req(Input{Name: "input_data", Edge: true, Types: []string{typeDataFrame, typeData}}),
			lit("mode"),
			msg("pattern"),
			lit("format"),
			msg("sep"),
			lit("clean_data"),
		},
		Outputs: []Output{{Name: "parsed_text", Type: typeMessage}},
	},
	"CurrentDate": {
		Type:    "CurrentDate",
		Aliases: []string{"CurrentDateComponent"},
		Inputs:  []Input{msg("timezone"), lit("tools_metadata")},
		Outputs: []Output{{Name: "current_date", Type: typeMessage}},
		IsTool:  true,
	},
	"SplitText": {
		Type:    "SplitText",
		Aliases: []string{"SplitTextComponent"},
		Inputs: []Input{
			req(Input{Name: "data_inputs", Edge: true, List: true, Types: []string{typeData, typeDataFrame, typeMessage}}),
			lit("mode"),
			lit("chunk_size"),
			lit("chunk_overlap"),
			msg("separator"),
			msg("custom_separator"),
			lit("recursive_separators"),
			lit("recursive_separators_bool"),
			msg("text_key"),
			lit("keep_separator"),
			lit("clean_output"),
		},
		Outputs: []Output{
			{Name: "chunks", Type: typeData},
			{Name: "dataframe", Type: typeDataFrame},
		},
	},
	"OpenAIEmbeddings": {
		// The key and base URL fields are carried but unused: the model
		// table holds providers' keys.
		Type:    "OpenAIEmbeddings",
		Aliases: []string{"OpenAIEmbeddingsComponent"},
		Inputs:  []Input{lit("model"), lit("dimensions"), lit("chunk_size")},
		Outputs: []Output{{Name: "embeddings", Type: typeEmbeddings}},
	},
	"EmbeddingModel": {
		// The model is a model list ([{"name": …, "provider": …}]), a name,
		// or an Embeddings edge passed on.
		Type:    "EmbeddingModel",
		Aliases: []string{"EmbeddingModelComponent"},
		Inputs: []Input{
			{Name: "model", Edge: true, Types: []string{typeEmbeddings}},
			lit("dimensions"),
			lit("chunk_size"),
		},
		Outputs: []Output{{Name: "embeddings", Type: typeEmbeddings}},
	},
	"FAISS": {
		Type:    "FAISS",
		Aliases: []string{"FaissVectorStoreComponent"},
		Inputs:  withInputs(vectorStoreInputs("index_name"), lit("tools_metadata")),
		Outputs: vectorStoreOutputs(),
		IsTool:  true,
	},
	"Chroma": {
		Type:    "Chroma",
		Aliases: []string{"ChromaVectorStoreComponent"},
		Inputs:  withInputs(vectorStoreInputs("collection_name"), lit("allow_duplicates"), lit("limit"), lit("search_type"), lit("tools_metadata")),
		Outputs: vectorStoreOutputs(),
		IsTool:  true,
	},
	"KnowledgeIngestion": {
		Type:    "KnowledgeIngestion",
		Aliases: []string{"KnowledgeIngestionComponent", "KBIngestion"},
		Inputs: []Input{
			req(lit("knowledge_base")),
			req(Input{Name: "input_df", Edge: true, List: true, Types: []string{typeDataFrame, typeData, typeMessage}}),
			lit("column_config"),
			lit("chunk_size"),
			lit("allow_duplicates"),
			lit("embedding_model"),
		},
		Outputs: []Output{{Name: "dataframe_output", Type: typeData}},
	},
	"KnowledgeBase": {
		// LangFlow's Knowledge Retrieval.
		Type:    "KnowledgeBase",
		Aliases: []string{"KnowledgeBaseComponent", "KnowledgeRetrieval", "KBRetrieval"},
		Inputs: []Input{
			req(lit("knowledge_base")),
			msg("search_query"),
			lit("top_k"),
			lit("include_metadata"),
			lit("include_embeddings"),
		},
		Outputs: []Output{{Name: "retrieve_data", Type: typeDataFrame}},
	},
	"BatchRunComponent": {
		// The model is a LanguageModel edge (LangFlow 1.1–1.6) or the
		// node's own model list (later exports).
		Type: "BatchRunComponent",
		Inputs: []Input{
			{Name: "model", Edge: true, Types: []string{typeModel}},
			lit("api_key"),
			msg("system_message"),
			req(Input{Name: "df", Edge: true, Types: []string{typeDataFrame}}),
			msg("column_name"),
			msg("output_column_name"),
			lit("enable_metadata"),
		},
		Outputs: []Output{{Name: "batch_results", Type: typeDataFrame}},
	},
	"StructuredOutput": {
		// The model is a LanguageModel on "llm" (LangFlow 1.1–1.4) or
		// "model", else the node's own model list (later exports).
		Type:    "StructuredOutput",
		Aliases: []string{"StructuredOutputComponent"},
		Inputs: []Input{
			{Name: "llm", Edge: true, EdgeOnly: true, Types: []string{typeModel}},
			{Name: "model", Edge: true, Types: []string{typeModel}},
			lit("api_key"),
			req(msg("input_value")),
			msg("system_prompt"),
			msg("schema_name"),
			req(lit("output_schema")),
			lit("multiple"),
		},
		Outputs: []Output{
			{Name: "structured_output", Type: typeData},
			{Name: "dataframe_output", Type: typeDataFrame},
			{Name: "structured_output_dataframe", Type: typeDataFrame},
		},
	},
	"LoopComponent": {
		// The body's result comes back into "item": a feedback edge.
		Type:    "LoopComponent",
		Aliases: []string{"Loop"},
		Inputs: []Input{
			{Name: "data", Edge: true, Types: []string{typeDataFrame, typeData, typeMessage}},
			{Name: "item", Edge: true, EdgeOnly: true, List: true, Types: []string{typeData, typeMessage, typeDataFrame}},
		},
		Outputs: []Output{
			{Name: "item", Type: typeData},
			{Name: "done", Type: typeDataFrame},
		},
		AllowsCycles: true,
	},
	TypeCustomComponent: {
		Type:     TypeCustomComponent,
		IsCustom: true,
	},
}

// noteTypes are annotation node types: dropped when reading a flow.
var noteTypes = map[string]bool{"noteNode": true, "note": true}
