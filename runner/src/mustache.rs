//! The mustache subset used by agent prompts (§15.2 step 4): variables `{{a.b}}` (never HTML-escaped),
//! sections `{{#x}}…{{/x}}` (rendered when truthy, once per item for lists), inverted sections
//! `{{^x}}…{{/x}}`, comments `{{! … }}`. Unknown names and partials render empty. Tags alone on a line
//! take their line with them, as in the mustache spec, so prompts keep their layout.

use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Node {
    Text(String),
    Var(String),
    Section {
        name: String,
        inverted: bool,
        children: Vec<Node>,
    },
}

enum Tok {
    Text(String),
    Var(String),
    Open(String, bool),
    Close(String),
}

/// Renders `template` against `context`. Malformed templates (an unclosed section) render their
/// remaining text literally rather than failing the run.
pub fn render(template: &str, context: &Value) -> String {
    let nodes = parse(tokenize(template));
    let mut out = String::with_capacity(template.len());
    let mut stack = vec![context];
    render_nodes(&nodes, &mut stack, &mut out);
    out
}

fn tokenize(t: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut pos = 0;
    while let Some(off) = t[pos..].find("{{") {
        let start = pos + off;
        let triple = t[start..].starts_with("{{{");
        let (open_len, close) = if triple { (3, "}}}") } else { (2, "}}") };
        let Some(close_off) = t[start + open_len..].find(close) else {
            break;
        };
        let inner = t[start + open_len..start + open_len + close_off].trim();
        let mut end = start + open_len + close_off + close.len();
        let mut text_end = start;

        let (kind, rest) = match inner.chars().next() {
            Some(c @ ('#' | '^' | '/' | '!' | '>' | '&' | '=')) if !triple => {
                (c, inner[c.len_utf8()..].trim())
            }
            _ => ('v', inner),
        };
        // A non-variable tag alone on its line removes that line's indentation and newline.
        if !matches!(kind, 'v' | '&') {
            let line_start = t[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let before_blank = line_start >= pos && is_blank(&t[line_start..start]);
            let after = &t[end..];
            let nl = after.find('\n');
            let after_blank = is_blank(&after[..nl.unwrap_or(after.len())]);
            if before_blank && after_blank {
                text_end = line_start;
                end = nl.map(|i| end + i + 1).unwrap_or(t.len());
            }
        }
        if text_end > pos {
            toks.push(Tok::Text(t[pos..text_end].to_string()));
        }
        match kind {
            '#' => toks.push(Tok::Open(rest.to_string(), false)),
            '^' => toks.push(Tok::Open(rest.to_string(), true)),
            '/' => toks.push(Tok::Close(rest.to_string())),
            'v' | '&' => toks.push(Tok::Var(rest.to_string())),
            _ => {} // comments, partials and delimiter changes render nothing
        }
        pos = end;
    }
    if pos < t.len() {
        toks.push(Tok::Text(t[pos..].to_string()));
    }
    toks
}

fn is_blank(s: &str) -> bool {
    s.chars().all(|c| c == ' ' || c == '\t' || c == '\r')
}

fn parse(toks: Vec<Tok>) -> Vec<Node> {
    // Stack of open sections: (name, inverted, children so far).
    let mut stack: Vec<(String, bool, Vec<Node>)> = vec![(String::new(), false, Vec::new())];
    for tok in toks {
        match tok {
            Tok::Text(s) => stack.last_mut().unwrap().2.push(Node::Text(s)),
            Tok::Var(name) => stack.last_mut().unwrap().2.push(Node::Var(name)),
            Tok::Open(name, inverted) => stack.push((name, inverted, Vec::new())),
            Tok::Close(name) => {
                // Close the nearest matching section; a stray close tag is ignored.
                if stack.len() > 1 && stack.iter().skip(1).any(|(n, _, _)| *n == name) {
                    loop {
                        let (n, inverted, children) = stack.pop().unwrap();
                        let done = n == name;
                        stack.last_mut().unwrap().2.push(Node::Section {
                            name: n,
                            inverted,
                            children,
                        });
                        if done {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Unclosed sections: close them where the template ends.
    while stack.len() > 1 {
        let (name, inverted, children) = stack.pop().unwrap();
        stack.last_mut().unwrap().2.push(Node::Section {
            name,
            inverted,
            children,
        });
    }
    stack.pop().unwrap().2
}

fn lookup<'a>(stack: &[&'a Value], name: &str) -> Option<&'a Value> {
    if name == "." {
        return stack.last().copied();
    }
    let mut parts = name.split('.');
    let first = parts.next()?;
    let mut cur = stack.iter().rev().find_map(|v| v.get(first))?;
    for p in parts {
        cur = match cur {
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            other => other.get(p)?,
        };
    }
    Some(cur)
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

fn render_nodes(nodes: &[Node], stack: &mut Vec<&Value>, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(s) => out.push_str(s),
            Node::Var(name) => match lookup(stack, name) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => out.push_str(s),
                Some(v) => out.push_str(&v.to_string()),
            },
            Node::Section {
                name,
                inverted,
                children,
            } => {
                let v = lookup(stack, name);
                if *inverted {
                    if !truthy(v) {
                        render_nodes(children, stack, out);
                    }
                    continue;
                }
                if !truthy(v) {
                    continue;
                }
                match v {
                    Some(Value::Array(items)) => {
                        for item in items {
                            stack.push(item);
                            render_nodes(children, stack, out);
                            stack.pop();
                        }
                    }
                    Some(v) => {
                        stack.push(v);
                        render_nodes(children, stack, out);
                        stack.pop();
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_and_dotted_names_are_not_escaped() {
        let ctx =
            json!({"input": {"topic": "<b>Rust</b> & co", "n": 3, "ok": true}, "runId": "run_1"});
        assert_eq!(
            render(
                "{{input.topic}} / {{ input.n }} / {{input.ok}} / {{runId}}",
                &ctx
            ),
            "<b>Rust</b> & co / 3 / true / run_1"
        );
        assert_eq!(
            render("{{{input.topic}}}|{{&input.topic}}", &ctx),
            "<b>Rust</b> & co|<b>Rust</b> & co"
        );
    }

    #[test]
    fn unknown_tags_render_empty() {
        let ctx = json!({"input": {}});
        assert_eq!(
            render(
                "a{{nope}}b{{input.missing.deep}}c{{> partial}}d{{! note }}e",
                &ctx
            ),
            "abcde"
        );
    }

    #[test]
    fn sections_truthy_and_iterated() {
        let ctx = json!({"memories": [{"content": "one"}, {"content": "two"}], "flag": true, "name": "x", "obj": {"k": "v"}});
        assert_eq!(
            render("{{#memories}}[{{content}}]{{/memories}}", &ctx),
            "[one][two]"
        );
        assert_eq!(render("{{#flag}}yes {{name}}{{/flag}}", &ctx), "yes x");
        assert_eq!(render("{{#obj}}{{k}}-{{name}}{{/obj}}", &ctx), "v-x");
        assert_eq!(render("{{#missing}}no{{/missing}}", &ctx), "");
        assert_eq!(
            render("{{#list}}{{.}},{{/list}}", &json!({"list": [1, "a"]})),
            "1,a,"
        );
    }

    #[test]
    fn inverted_sections() {
        let ctx = json!({"memories": [], "checkpoint": null, "empty": "", "zero": 0, "set": "v"});
        assert_eq!(render("{{^memories}}none{{/memories}}", &ctx), "none");
        assert_eq!(render("{{^checkpoint}}cold{{/checkpoint}}", &ctx), "cold");
        assert_eq!(
            render(
                "{{^empty}}e{{/empty}}{{^zero}}z{{/zero}}{{^set}}s{{/set}}",
                &ctx
            ),
            "ez"
        );
        assert_eq!(render("{{^absent}}a{{/absent}}", &ctx), "a");
    }

    #[test]
    fn standalone_tags_take_their_line() {
        let tpl = "A\n{{#xs}}\n- {{.}}\n{{/xs}}\n  {{^xs}}\nnone\n  {{/xs}}\nB\n";
        assert_eq!(render(tpl, &json!({"xs": ["1", "2"]})), "A\n- 1\n- 2\nB\n");
        assert_eq!(render(tpl, &json!({"xs": []})), "A\nnone\nB\n");
        // Not standalone: text on the same line keeps everything.
        assert_eq!(
            render("x {{#a}}y{{/a}} z\n", &json!({"a": true})),
            "x y z\n"
        );
    }

    #[test]
    fn nested_sections_and_malformed_input() {
        let ctx = json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        assert_eq!(render("{{#a}}{{#b}}{{c}}{{/b}}{{/a}}", &ctx), "12");
        assert_eq!(render("{{#a}}open", &ctx), "open");
        assert_eq!(
            render("stray{{/x}} {{unterminated", &ctx),
            "stray {{unterminated"
        );
    }

    #[test]
    fn briefing_prompt_first_run() {
        let tpl = include_str!("../../../shared/fixtures/afps/agents/briefing-agent/prompt.md");
        let ctx = json!({
            "input": {"topic": "Quantum networking", "priority": "high", "audience": "execs"},
            "runId": "run_abc",
            "memories": [],
            "checkpoint": null,
        });
        let out = render(tpl, &ctx);
        assert!(out.contains("You are producing a briefing for: **Quantum networking**."));
        assert!(out.contains("| Priority  | `high` |"));
        assert!(out.contains("| Run       | `run_abc` |"));
        assert!(out.contains(
            "## Prior context\n\n_No prior context — this is the first run._\n\n## Continuity"
        ));
        assert!(out.contains("No prior checkpoint. Treat this as a cold start."));
        assert!(!out.contains("{{"));
        assert!(!out.contains("Last briefing ran"));
    }
}
