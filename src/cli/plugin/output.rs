//! Output as kubectl prints it: a table by default, `-o json` or `-o yaml` for scripts.

use std::io::Write;

use serde::Serialize;

use super::PluginError;

/// `-o`: a machine-readable format. Without it, a table.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

/// `value` in `format` (ending in a newline), or the table `table` draws.
pub fn render<T: Serialize>(
    format: Option<Format>,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<String, PluginError> {
    let failed = |format: Format, reason: String| PluginError::Format {
        format: format.as_str(),
        reason,
    };
    match format {
        None => Ok(table()),
        Some(f @ Format::Json) => serde_json::to_string_pretty(value)
            .map(|text| text + "\n")
            .map_err(|e| failed(f, e.to_string())),
        Some(f @ Format::Yaml) => {
            serde_saphyr::to_string(value).map_err(|e| failed(f, e.to_string()))
        }
    }
}

/// Writes `text` to standard output.
pub fn print(text: &str) -> Result<(), PluginError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(PluginError::Write)
}

/// A table as kubectl draws one: upper-case headers, columns left-aligned and three
/// spaces apart, `<none>` for an empty cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |row: &[String], i: usize| -> String {
        match row.get(i).map(String::as_str) {
            None | Some("") => "<none>".to_owned(),
            // A cell is one line: a multi-line message would break the columns.
            Some(text) => text.replace(['\n', '\r', '\t'], " "),
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| (0..headers.len()).map(|i| cell(row, i)).collect())
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, value) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(value);
            } else {
                let pad = widths[i] - value.chars().count() + 3;
                line.push_str(value);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lines_up_its_columns_like_kubectl() {
        let text = table(
            &["name", "ready", "message"],
            &[
                vec!["login".into(), "False".into(), "does not\nopen".into()],
                vec!["a-much-longer-name".into(), String::new()],
            ],
        );
        assert_eq!(
            text,
            "NAME                 READY    MESSAGE\n\
             login                False    does not open\n\
             a-much-longer-name   <none>   <none>\n"
        );
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        allowed: bool,
        through: Option<&'static str>,
    }

    #[test]
    fn json_and_yaml_carry_the_same_fields_and_no_table() {
        let value = Answer {
            allowed: true,
            through: Some("vaultsections/checkout"),
        };
        let json = render(Some(Format::Json), &value, || "TABLE".into()).expect("json");
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(parsed["allowed"], true);
        assert_eq!(parsed["through"], "vaultsections/checkout");
        let yaml = render(Some(Format::Yaml), &value, || "TABLE".into()).expect("yaml");
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).expect("valid yaml");
        assert_eq!(parsed["through"], "vaultsections/checkout");
        assert_eq!(
            render(None, &value, || "TABLE".into()).expect("table"),
            "TABLE"
        );
    }
}
