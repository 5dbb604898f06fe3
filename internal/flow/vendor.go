package flow

// vendorTypes are LangFlow component types (from its starter projects and
// component library) that exist to call one vendor's cloud service, with
// the vendor's name. Sluice does not run them natively: a flow that uses
// one is refused at validation with a message that points to the LangFlow
// front (docs/langflow-front.md), which governs such flows run by a
// LangFlow server. A type the catalog implements is never looked up here.
var vendorTypes = map[string]string{
	// DataStax Astra DB and its relatives.
	"AstraDB": "DataStax Astra DB", "AstraVectorStoreComponent": "DataStax Astra DB", "AstraDBGraph": "DataStax Astra DB",
	"AstraDBCQLToolComponent": "DataStax Astra DB", "AstraDBToolComponent": "DataStax Astra DB", "AstraDBChatMemory": "DataStax Astra DB",
	"AstraVectorize": "DataStax Astra DB", "AstraAssistantManager": "DataStax Astra Assistants", "HCD": "DataStax HCD",
	// Scraping, extraction and search services.
	"ApifyActors": "Apify", "AgentQL": "AgentQL", "ExaSearch": "Exa", "GoogleSerperAPI": "Serper",
	"GoogleSearchAPICore": "Google Search API", "GoogleSearchAPI": "Google Search API", "SerpAPI": "SerpApi", "SerpComponent": "SerpApi",
	"BingSearchAPI": "Bing Search", "WolframAlphaAPI": "Wolfram Alpha", "GleanSearchAPIComponent": "Glean",
	"FirecrawlCrawlApi": "Firecrawl", "FirecrawlScrapeApi": "Firecrawl", "FirecrawlMapApi": "Firecrawl", "FirecrawlExtractApi": "Firecrawl",
	"ScrapeGraphSmartScraperApi": "ScrapeGraph AI", "ScrapeGraphMarkdownifyApi": "ScrapeGraph AI", "ScrapeGraphSearchApi": "ScrapeGraph AI",
	"YfinanceComponent": "Yahoo Finance",
	// Audio.
	"AssemblyAITranscriptionJobCreator": "AssemblyAI", "AssemblyAITranscriptionJobPoller": "AssemblyAI", "AssemblyAIGetSubtitles": "AssemblyAI",
	"AssemblyAILeMUR": "AssemblyAI", "AssemblyAIListTranscripts": "AssemblyAI",
	// YouTube.
	"YouTubeTranscripts": "YouTube", "YouTubeCommentsComponent": "YouTube", "YouTubeChannelComponent": "YouTube",
	"YouTubeSearchComponent": "YouTube", "YouTubeVideoDetailsComponent": "YouTube", "YouTubePlaylistComponent": "YouTube",
	"YouTubeTrendingComponent": "YouTube",
	// Notion.
	"NotionPageCreator": "Notion", "NotionDatabaseProperties": "Notion", "NotionListPages": "Notion", "NotionUserList": "Notion",
	"NotionPageContent": "Notion", "NotionPageUpdate": "Notion", "NotionSearch": "Notion", "AddContentToPage": "Notion",
	// Composio.
	"ComposioAPI": "Composio", "ComposioGmailAPIComponent": "Composio", "ComposioGitHubAPIComponent": "Composio",
	"ComposioSlackAPIComponent": "Composio", "ComposioOutlookAPIComponent": "Composio", "ComposioGoogleCalendarAPIComponent": "Composio",
	"ComposioGoogleTasksAPIComponent": "Composio",
	// Google Workspace.
	"GmailLoaderComponent": "Google Gmail", "GoogleDriveComponent": "Google Drive", "GoogleDriveSearchComponent": "Google Drive",
	"GoogleOAuthToken": "Google OAuth",
	// Memories, evaluators and other hosted services.
	"ZepChatMemory": "Zep", "Mem0MemoryComponent": "Mem0", "LangWatchEvaluator": "LangWatch",
	"CleanlabEvaluator": "Cleanlab", "CleanlabRemediator": "Cleanlab", "CleanlabRAGEvaluator": "Cleanlab",
	"Confluence": "Atlassian Confluence", "Unstructured": "Unstructured", "UnstructuredComponent": "Unstructured",
}

// Vendor returns the vendor whose cloud a component type needs, or "" for
// a type that is not one of vendorTypes.
func Vendor(typ string) string { return vendorTypes[typ] }

// VendorTypes lists the vendor component types refused natively.
func VendorTypes() []string {
	out := make([]string, 0, len(vendorTypes))
	for t := range vendorTypes {
		out = append(out, t)
	}
	return out
}
