//! Test times from nextest's JUnit report: the slowest tests of a run, for
//! the end of `cargo xtask test` (and so of CI's log).

/// One test case: `binary::test`, seconds, and whether it failed.
#[derive(Debug, PartialEq)]
pub struct Case {
    pub name: String,
    pub seconds: f64,
    pub failed: bool,
}

/// The value of `attr="…"` inside one XML start tag, unescaped for the
/// five predefined entities (test names hold none of the others).
fn attr(tag: &str, attr: &str) -> Option<String> {
    let key = format!(" {attr}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(
        tag[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Every `<testcase>` of a JUnit report as nextest writes it (one
/// `<testcase name=… classname=… time=…>` per test, a `<failure>` or
/// `<error>` child when it failed).
pub fn cases(xml: &str) -> Vec<Case> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<testcase ") {
        rest = &rest[i..];
        let Some(end) = rest.find('>') else { break };
        let tag = &rest[..end];
        let self_closing = tag.ends_with('/');
        let body_end = if self_closing {
            0
        } else {
            rest.find("</testcase>").unwrap_or(rest.len())
        };
        let body = &rest[end..body_end.max(end)];
        let name = attr(tag, "name").unwrap_or_default();
        let class = attr(tag, "classname").unwrap_or_default();
        out.push(Case {
            name: if class.is_empty() {
                name
            } else {
                format!("{class} {name}")
            },
            seconds: attr(tag, "time")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0),
            failed: body.contains("<failure") || body.contains("<error"),
        });
        rest = &rest[end..];
    }
    out
}

/// The `n` slowest tests and the sum of all test times, as lines for a log.
pub fn slowest_report(xml: &str, n: usize) -> String {
    let mut v = cases(xml);
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let total: f64 = v.iter().map(|c| c.seconds).sum();
    let mut s = format!(
        "== the {} slowest of {} tests (test time in all: {:.0} s)\n",
        n.min(v.len()),
        v.len(),
        total
    );
    for c in v.iter().take(n) {
        s.push_str(&format!(
            "{:>8.1} s  {}{}\n",
            c.seconds,
            c.name,
            if c.failed { "  FAILED" } else { "" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="1" errors="0" uuid="x" timestamp="t" time="12.5">
    <testsuite name="drover-core" tests="2" disabled="0" errors="0" failures="0">
        <testcase name="gpt::tests::a &amp; b" classname="drover-core" timestamp="t" time="0.010">
        </testcase>
        <testcase name="slow" classname="drover-core" timestamp="t" time="12.400"/>
    </testsuite>
    <testsuite name="drover-qemu-tests::boot" tests="1" disabled="0" errors="0" failures="1">
        <testcase name="direct_boot" classname="drover-qemu-tests::boot" timestamp="t" time="3.250">
            <failure type="test failure">boom</failure>
        </testcase>
    </testsuite>
</testsuites>
"#;

    #[test]
    fn reads_names_times_and_failures() {
        let c = cases(XML);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].name, "drover-core gpt::tests::a & b");
        assert!(!c[0].failed);
        assert_eq!(c[1].seconds, 12.4);
        assert!(!c[1].failed, "a self-closing case has no failure child");
        assert!(c[2].failed);
    }

    #[test]
    fn lists_the_slowest_first() {
        let r = slowest_report(XML, 2);
        let lines: Vec<&str> = r.lines().collect();
        assert!(lines[0].contains("the 2 slowest of 3 tests"), "{r}");
        assert!(lines[1].ends_with("drover-core slow"), "{r}");
        assert!(
            lines[2].ends_with("drover-qemu-tests::boot direct_boot  FAILED"),
            "{r}"
        );
        assert_eq!(lines.len(), 3);
    }
}
