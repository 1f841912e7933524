package event

// Context is what the pipeline learns about an event before deciding:
// enrichment, then risk. It is stored with the event, shown by the API, and
// is part of the input that playbooks and policy see.
type Context struct {
	Enrichment *Enrichment `json:"enrichment,omitempty"`
	Risk       *Risk       `json:"risk,omitempty"`
	IncidentID string      `json:"incident_id,omitempty"`
}

// Enrichment is the context gathered about an event's entities.
type Enrichment struct {
	// Internal is true when the event's source address is in an internal range.
	Internal bool `json:"internal"`
	// Protected lists the event's entities that are protected infrastructure.
	Protected []string `json:"protected,omitempty"`
	// Threat is the combined threat-intelligence verdict on the source.
	Threat Threat `json:"threat"`
	// Addresses holds per-address context (geo, ASN, owner), keyed by address.
	Addresses map[string]AddressInfo `json:"addresses,omitempty"`
	// Missing names the enrichers that failed or timed out (fail-open).
	Missing []string `json:"missing,omitempty"`
	// FailClosed is set when a fail-closed enricher could not answer: no
	// automatic action may be taken on this event.
	FailClosed bool `json:"fail_closed,omitempty"`
	// Errors holds each failed enricher's error, by enricher name.
	Errors map[string]string `json:"errors,omitempty"`
}

// Threat is a combined threat score in 0..1 with what contributed to it.
type Threat struct {
	Score   float64        `json:"score"`
	Sources []ThreatSource `json:"sources,omitempty"`
}

// ThreatSource is one contributor to a threat score.
type ThreatSource struct {
	Name  string  `json:"name"`
	Score float64 `json:"score"`
	Note  string  `json:"note,omitempty"`
}

// AddressInfo is what quell knows about one address.
type AddressInfo struct {
	Internal  bool              `json:"internal"`
	Protected bool              `json:"protected,omitempty"`
	Country   string            `json:"country,omitempty"`
	City      string            `json:"city,omitempty"`
	ASN       int               `json:"asn,omitempty"`
	ASOrg     string            `json:"as_org,omitempty"`
	Owner     string            `json:"owner,omitempty"`
	Asset     map[string]string `json:"asset,omitempty"` // namespace, workload, labels, ...
}

// Risk is the scored risk of an event, with its explanation.
type Risk struct {
	Level      string          `json:"level"` // LOW, MEDIUM, HIGH, CRITICAL
	Score      float64         `json:"score"` // 0..100
	Tier       string          `json:"tier"`  // contain, page, dashboard, log
	Components []RiskComponent `json:"components,omitempty"`
	Reasons    []string        `json:"reasons,omitempty"`
}

// RiskComponent is one weighted term of a risk score.
type RiskComponent struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"` // 0..1
	Weight float64 `json:"weight"`
	Note   string  `json:"note,omitempty"`
}
