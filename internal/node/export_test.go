package node

// TemplatesChanged asks for a report, as a pull or an eviction does.
func (a *Agent) TemplatesChanged() { a.templatesChanged() }

var ReportDue = reportDue
