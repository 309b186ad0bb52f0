// Package mutate is Corral's mutation tester. It makes one small change to a
// package's source at a time (flips a comparison, swaps && and ||, + and -,
// drops a negation, an assignment or a call), runs that package's own tests
// against the change through `go test -overlay` (the work tree is never
// written), and counts the mutants the tests kill. A mutant that survives is
// a change of behaviour no test of the package notices.
//
// `make mutate PKG=./internal/scheduler` runs it (see the README).
package mutate

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"sort"
	"strings"
)

// A Mutant is one changed copy of a source file.
type Mutant struct {
	File string // path of the original file
	Line int
	Col  int
	Op   string // what changed, e.g. "== -> !=" or "drop r.SlotHeld = false"
	Src  []byte // the whole file with the change
}

func (m Mutant) String() string { return fmt.Sprintf("%s:%d:%d %s", m.File, m.Line, m.Col, m.Op) }

// swaps are the operator mutations: comparisons flipped to their complement
// and moved across their boundary, logic and arithmetic swapped.
var swaps = map[token.Token][]token.Token{
	token.EQL:  {token.NEQ},
	token.NEQ:  {token.EQL},
	token.LSS:  {token.GEQ, token.LEQ},
	token.GTR:  {token.LEQ, token.GEQ},
	token.LEQ:  {token.GTR, token.LSS},
	token.GEQ:  {token.LSS, token.GTR},
	token.LAND: {token.LOR},
	token.LOR:  {token.LAND},
	token.ADD:  {token.SUB},
	token.SUB:  {token.ADD},
	token.MUL:  {token.QUO},
	token.QUO:  {token.MUL},
}

// Mutants returns every mutant of one Go source file, in source order.
// Statements that only log are left alone: no test is expected to read logs.
func Mutants(path string, src []byte) ([]Mutant, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("mutate: parse %s: %w", path, err)
	}
	var out []Mutant
	skip := logOnlyConditions(f)
	add := func(pos token.Pos, end token.Pos, repl, op string) {
		for _, r := range skip {
			if pos >= r[0] && end <= r[1] {
				return // it decides only whether a log line is written
			}
		}
		p, e := fset.Position(pos), fset.Position(end)
		b := make([]byte, 0, len(src)+len(repl))
		b = append(append(append(b, src[:p.Offset]...), repl...), src[e.Offset:]...)
		out = append(out, Mutant{File: path, Line: p.Line, Col: p.Column, Op: op, Src: b})
	}
	text := func(n ast.Node) string {
		return string(src[fset.Position(n.Pos()).Offset:fset.Position(n.End()).Offset])
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GenDecl:
			// Constants and package variables: a changed constant is a
			// changed number, not a changed decision; leave them.
			return n.Tok != token.CONST && n.Tok != token.VAR
		case *ast.BinaryExpr:
			if isStringLit(n.X) || isStringLit(n.Y) {
				break // "a" + "b" has no other operator
			}
			for _, to := range swaps[n.Op] {
				add(n.OpPos, n.OpPos+token.Pos(len(n.Op.String())), to.String(), n.Op.String()+" -> "+to.String())
			}
		case *ast.UnaryExpr:
			if n.Op == token.NOT {
				add(n.OpPos, n.OpPos+1, "", "drop !")
			}
		case *ast.BlockStmt:
			for _, s := range n.List {
				if drop, ok := dropped(s, text); ok {
					add(s.Pos(), s.End(), drop, "drop "+oneLine(text(s)))
				}
			}
		case *ast.CaseClause, *ast.CommClause:
			body := []ast.Stmt(nil)
			if c, ok := n.(*ast.CaseClause); ok {
				body = c.Body
			} else {
				body = n.(*ast.CommClause).Body
			}
			for _, s := range body {
				if drop, ok := dropped(s, text); ok {
					add(s.Pos(), s.End(), drop, "drop "+oneLine(text(s)))
				}
			}
		}
		return true
	})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].Col < out[j].Col
	})
	return out, nil
}

// dropped says what replaces a dropped statement: an assignment keeps its
// right-hand side (evaluated into blanks, so the file still compiles and
// calls still happen) but stores nothing; a call or ++/-- goes entirely.
func dropped(s ast.Stmt, text func(ast.Node) string) (string, bool) {
	switch s := s.(type) {
	case *ast.AssignStmt:
		if s.Tok == token.DEFINE {
			return "", false // the names are used later: it would not compile
		}
		if s.Tok != token.ASSIGN {
			return "", true // x += y and friends
		}
		for _, l := range s.Lhs {
			if id, ok := l.(*ast.Ident); ok && id.Name == "_" {
				return "", false
			}
		}
		blanks := strings.TrimSuffix(strings.Repeat("_, ", len(s.Lhs)), ", ")
		var rhs []string
		for _, r := range s.Rhs {
			rhs = append(rhs, text(r))
		}
		return blanks + " = " + strings.Join(rhs, ", "), true
	case *ast.IncDecStmt:
		return "", true
	case *ast.ExprStmt:
		call, ok := s.X.(*ast.CallExpr)
		if !ok || logs(call) || sleeps(call) {
			return "", false
		}
		return "", true
	}
	return "", false
}

// sleeps reports whether a call is time.Sleep: a pause no test can tell
// from none without timing it.
func sleeps(call *ast.CallExpr) bool {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "time" && sel.Sel.Name == "Sleep"
}

// logOnlyConditions are the conditions of if statements whose every branch
// only logs: a mutant there changes a log line, nothing a test should read.
func logOnlyConditions(f *ast.File) [][2]token.Pos {
	var out [][2]token.Pos
	ast.Inspect(f, func(n ast.Node) bool {
		if s, ok := n.(*ast.IfStmt); ok && onlyLogs(s) {
			out = append(out, [2]token.Pos{s.Cond.Pos(), s.Cond.End()})
		}
		return true
	})
	return out
}

// onlyLogs reports whether a statement does nothing but log.
func onlyLogs(s ast.Stmt) bool {
	switch s := s.(type) {
	case *ast.ExprStmt:
		call, ok := s.X.(*ast.CallExpr)
		return ok && logs(call)
	case *ast.BlockStmt:
		for _, x := range s.List {
			if !onlyLogs(x) {
				return false
			}
		}
		return true
	case *ast.IfStmt:
		return onlyLogs(s.Body) && (s.Else == nil || onlyLogs(s.Else))
	}
	return false
}

// logs reports whether a call only writes a log line.
func logs(call *ast.CallExpr) bool {
	for e := call.Fun; ; {
		switch x := e.(type) {
		case *ast.SelectorExpr:
			switch x.Sel.Name {
			case "log", "logger", "Log", "Logf", "Debug", "Info", "Warn", "Error", "DebugContext", "InfoContext", "WarnContext", "ErrorContext", "Printf", "Println":
				if x.Sel.Name == "Error" && len(call.Args) == 0 {
					return false // x.Error(): a method, not a log
				}
				return true
			}
			e = x.X
		case *ast.Ident:
			return x.Name == "log" || x.Name == "slog" || x.Name == "logger"
		case *ast.CallExpr:
			e = x.Fun
		default:
			return false
		}
	}
}

func isStringLit(e ast.Expr) bool {
	b, ok := e.(*ast.BasicLit)
	return ok && b.Kind == token.STRING
}

func oneLine(s string) string {
	s = string(bytes.Join(bytes.Fields([]byte(s)), []byte(" ")))
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}
