//! `NODE`, `QUORUM` and `TABLE` lines: the cluster's introspection and table placement.

use super::{CmdResult, Command, Tokens, invalid, single_arg, usage, word_is};
use crate::protocol::key::parse_table;

const USAGE_NODE: &str = "usage: NODE LIST | NODE INFO <id> | NODE PING <id>";

/// After `NODE`.
pub(super) fn parse_node(tokens: &mut Tokens<'_>) -> CmdResult {
    let sub = tokens.next().ok_or_else(|| usage(USAGE_NODE))?;
    if word_is(sub, "LIST") && tokens.is_done() {
        return Ok(Command::NodeList);
    }
    let id = single_arg(tokens).ok_or_else(|| usage(USAGE_NODE))?;
    let id = String::from_utf8_lossy(id).into_owned();
    if word_is(sub, "INFO") {
        Ok(Command::NodeInfo(id))
    } else if word_is(sub, "PING") {
        Ok(Command::NodePing(id))
    } else {
        Err(usage(USAGE_NODE))
    }
}

/// After `QUORUM` or `TABLE` (`word`).
pub(super) fn parse_quorum_or_table(word: &[u8], tokens: &mut Tokens<'_>) -> CmdResult {
    let is_quorum = word_is(word, "QUORUM");
    let form = if is_quorum {
        "usage: QUORUM INFO <table>"
    } else {
        USAGE_TABLE
    };
    let sub = tokens.next().ok_or_else(|| usage(form))?;
    if !is_quorum && word_is(sub, "LIST") && tokens.is_done() {
        return Ok(Command::TableList);
    }
    if !is_quorum && (word_is(sub, "MOVE") || word_is(sub, "PIN") || word_is(sub, "UNPIN")) {
        return parse_placement(sub, tokens);
    }
    if !word_is(sub, "INFO") {
        return Err(usage(form));
    }
    let table = single_arg(tokens).ok_or_else(|| usage(form))?;
    let table = parse_table(table).map_err(invalid)?;
    Ok(if is_quorum {
        Command::QuorumInfo(table)
    } else {
        Command::TableInfo(table)
    })
}

const USAGE_TABLE: &str = "usage: TABLE INFO <table> | TABLE LIST | TABLE MOVE <table> TO <region> \
     | TABLE PIN <table> <region> | TABLE UNPIN <table>";

/// `TABLE MOVE <table> TO <region>`, `TABLE PIN <table> <region>`, `TABLE UNPIN <table>`.
fn parse_placement(sub: &[u8], tokens: &mut Tokens<'_>) -> CmdResult {
    let table = tokens.next().ok_or_else(|| usage(USAGE_TABLE))?;
    let table = parse_table(table).map_err(invalid)?;
    if word_is(sub, "UNPIN") {
        return match tokens.is_done() {
            true => Ok(Command::TableUnpin(table)),
            false => Err(usage(USAGE_TABLE)),
        };
    }
    if word_is(sub, "MOVE") && !tokens.next().is_some_and(|t| word_is(t, "TO")) {
        return Err(usage(USAGE_TABLE));
    }
    let region = single_arg(tokens).ok_or_else(|| usage(USAGE_TABLE))?;
    let region = match std::str::from_utf8(region) {
        Ok(r) if r.len() <= 255 && !r.chars().any(char::is_control) => r.to_string(),
        _ => return Err(invalid("invalid region: expected a word".to_string())),
    };
    Ok(if word_is(sub, "MOVE") {
        Command::TableMove { table, region }
    } else {
        Command::TablePin { table, region }
    })
}
