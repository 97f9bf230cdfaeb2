//! The Prometheus text exposition format (version 0.0.4): `# HELP`, `# TYPE`, then samples.

use std::fmt::Write;

use crate::histogram::Cumulative;

/// Builds one exposition document. Each family is written whole (its help, type and every
/// sample) before the next, as the format requires.
#[derive(Debug, Default)]
pub(crate) struct Text {
    out: String,
}

impl Text {
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample: `name{labels} value`.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels);
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A whole histogram's samples (`_bucket` per bound plus `+Inf`, `_sum`, `_count`).
    pub(crate) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Cumulative) {
        let bucket = format!("{name}_bucket");
        for &(bound, count) in &h.buckets {
            let le = format_bound(bound);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count as f64);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        self.out.push('}');
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn format_bound(b: f64) -> String {
    let mut s = String::new();
    push_value(&mut s, b);
    s
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_histograms() {
        let mut t = Text::default();
        t.family("x_total", "counter", "a \\ thing\nmore");
        t.sample("x_total", &[("queue", "a\"b\\c\nd")], 3.0);
        t.sample("y", &[], 0.25);
        let h = Cumulative {
            buckets: vec![(0.5, 1), (1.0, 2)],
            sum_seconds: 1.5,
            count: 3,
        };
        t.histogram("d_seconds", &[("queue", "q")], &h);
        let s = t.finish();
        assert_eq!(
            s,
            "# HELP x_total a \\\\ thing\\nmore\n# TYPE x_total counter\n\
             x_total{queue=\"a\\\"b\\\\c\\nd\"} 3\ny 0.25\n\
             d_seconds_bucket{queue=\"q\",le=\"0.5\"} 1\n\
             d_seconds_bucket{queue=\"q\",le=\"1\"} 2\n\
             d_seconds_bucket{queue=\"q\",le=\"+Inf\"} 3\n\
             d_seconds_sum{queue=\"q\"} 1.5\nd_seconds_count{queue=\"q\"} 3\n"
        );
    }
}
