//! `bench --export-json/--export-csv/--export-markdown`: one [`Report`], the
//! single source of truth, written in each format asked for, to a file or to
//! standard output ("-").
//!
//! Each save renders only the formats that have a file to go to, each once;
//! the exports to standard output are rendered once, at the end of the run,
//! when the report is complete.

use std::io::{self, Write};
use std::path::PathBuf;

use super::Report;

/// A machine format of a [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The serde structure itself, pretty-printed (what `ipclab report` reads).
    Json,
    /// One row per cell: transport × size × placement.
    Csv,
    /// The tables of the terminal, for a README.
    Markdown,
}

impl Format {
    /// The report in this format.
    pub fn render(self, report: &Report) -> io::Result<String> {
        Ok(match self {
            Format::Json => report.to_json(),
            Format::Csv => report.to_csv()?,
            Format::Markdown => report.to_markdown(),
        })
    }
}

/// Where an export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// "-" is standard output; anything else a file name.
    pub fn parse(arg: &str) -> Target {
        if arg == "-" {
            Target::Stdout
        } else {
            Target::File(arg.into())
        }
    }
}

/// The exports of one run, in the order asked for (JSON, CSV, Markdown).
#[derive(Clone, Debug, Default)]
pub struct Exports(Vec<(Format, Target)>);

impl Exports {
    /// The exports named on the command line; `None`: that format is not wanted.
    pub fn new<'a>(wanted: impl IntoIterator<Item = (Format, Option<&'a str>)>) -> Exports {
        Exports(
            wanted
                .into_iter()
                .filter_map(|(f, arg)| arg.map(|a| (f, Target::parse(a))))
                .collect(),
        )
    }

    /// Does an export claim standard output (so people's tables go elsewhere)?
    pub fn to_stdout(&self) -> bool {
        self.0.iter().any(|(_, t)| *t == Target::Stdout)
    }

    /// Write the file exports, replacing what an earlier save wrote (called
    /// after each transport, so that a crash keeps what was measured).
    pub fn save(&self, report: &Report) -> io::Result<()> {
        for (format, target) in &self.0 {
            if let Target::File(path) = target {
                let text = format.render(report)?;
                std::fs::write(path, text).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
                })?;
            }
        }
        Ok(())
    }

    /// Write the exports to standard output to `out`, one after the other.
    pub fn write_stdout(&self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        for (format, target) in &self.0 {
            if *target == Target::Stdout {
                out.write_all(format.render(report)?.as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_formats_asked_for_in_their_order() {
        let e = Exports::new([
            (Format::Json, Some("-")),
            (Format::Csv, None),
            (Format::Markdown, Some("run.md")),
        ]);
        assert!(e.to_stdout());
        assert_eq!(
            e.0,
            vec![
                (Format::Json, Target::Stdout),
                (Format::Markdown, Target::File("run.md".into()))
            ]
        );
        let none = Exports::new([(Format::Json, None), (Format::Csv, Some("x.csv"))]);
        assert!(!none.to_stdout());
    }
}
