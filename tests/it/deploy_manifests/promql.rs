//! PromQL as the alerts and the dashboard write it: parsed (a syntax error
//! fails the test instead of the rule group), and the series selectors in it.

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};

/// One series selector: a metric name and its label matchers (the name's
/// own `__name__` matcher left out).
#[derive(Debug, Clone)]
pub struct Selector {
    pub metric: String,
    /// `(label, value)` of each `label="value"` matcher.
    pub equal: Vec<(String, String)>,
    /// Labels matched any other way (`!=`, `=~`, `!~`).
    pub other: Vec<String>,
}

impl Selector {
    pub fn equal(&self, label: &str) -> Option<&str> {
        self.equal
            .iter()
            .find(|(name, _)| name == label)
            .map(|(_, value)| value.as_str())
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.equal
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(self.other.iter().map(String::as_str))
    }
}

/// Grafana's variables replaced by values PromQL accepts, so that a
/// dashboard query parses like the query Grafana sends.
pub fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${namespace}", "orders")
        .replace("$namespace", "orders")
}

/// The selectors of `expr`, or the parser's complaint.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let ast = parser::parse(expr)?;
    let mut found = Vec::new();
    collect(&ast, &mut found);
    Ok(found)
}

fn collect(expr: &Expr, found: &mut Vec<Selector>) {
    match expr {
        Expr::Aggregate(e) => {
            collect(&e.expr, found);
            if let Some(param) = &e.param {
                collect(param, found);
            }
        }
        Expr::Unary(e) => collect(&e.expr, found),
        Expr::Binary(e) => {
            collect(&e.lhs, found);
            collect(&e.rhs, found);
        }
        Expr::Paren(e) => collect(&e.expr, found),
        Expr::Subquery(e) => collect(&e.expr, found),
        Expr::MatrixSelector(m) => found.push(selector(&m.vs)),
        Expr::VectorSelector(vs) => found.push(selector(vs)),
        Expr::Call(call) => {
            for arg in &call.args.args {
                collect(arg, found);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &parser::VectorSelector) -> Selector {
    let mut out = Selector {
        metric: vs.name.clone().unwrap_or_default(),
        equal: Vec::new(),
        other: Vec::new(),
    };
    let or_matchers = vs.matchers.or_matchers.iter().flatten();
    for m in vs.matchers.matchers.iter().chain(or_matchers) {
        match (&m.op, m.name.as_str()) {
            (MatchOp::Equal, "__name__") => out.metric.clone_from(&m.value),
            (MatchOp::Equal, _) => out.equal.push((m.name.clone(), m.value.clone())),
            _ => out.other.push(m.name.clone()),
        }
    }
    out
}

#[test]
fn selectors_are_found_everywhere_in_an_expression() {
    let found = selectors(
        r#"sum by (le) (rate(a_bucket{job="x", outcome!="acked"}[5m])) / on () b{q=~"y|z"} unless absent(c)"#,
    )
    .unwrap();
    let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "c"]);
    assert_eq!(found[0].equal("job"), Some("x"));
    assert_eq!(found[0].other, ["outcome"]);
    assert_eq!(found[1].other, ["q"]);
    assert!(selectors("sum(rate(a[5m])").is_err());
    assert_eq!(
        without_grafana_variables(r#"rate(a{namespace="$namespace"}[$__rate_interval])"#),
        r#"rate(a{namespace="orders"}[1m])"#
    );
}
