//! Plain-text tables for the commands that print them (`check`, `once`, `history`, `demo`).

use crate::{message, store, text};

/// The status changes as a table, for `history` and the demo.
pub fn print_history(changes: &[store::StatusChange]) {
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                text::shown_time(&c.changed_at),
                c.org_name.clone(),
                c.org_id.clone(),
                c.from_status.clone().unwrap_or_else(|| "(first seen)".into()),
                c.to_status.clone(),
                c.previous_lasted_s
                    .map(message::human_secs)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(&["CHANGED AT", "ORG", "ID", "FROM", "TO", "FROM LASTED"], &rows);
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
