// torouter/log_training.hpp: training rows from a decision log (issue 14,
// item 6), so a router can be retrained on the traffic it served.
//
// A logged call with feedback becomes a row with one label: the called
// expert's quality is the verdict and its cost what was billed; every other
// expert's outcome is absent, which the scorers' training masks out. The
// rows can stand alone or join a full dataset's training rows:
//
//   auto reading = torouter::read_decision_log("decisions.jsonl");
//   auto data = torouter::load_routing_dataset("../shared/data/llmrouter14");
//   torouter::add_logged_rows(data, reading);  // data.train gains one row per call
//   auto set = torouter::make_training_set(data.experts, data.train, "log + llmrouter14");
#pragma once

#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/off_policy.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Appends one row per call of `reading` to `data.train`: the called expert
/// present with the verdict as its quality, the billed cost as `cost_usd`
/// and four characters per billed output token as `output_chars` (so the
/// row's output tokens are the billed ones); every other expert absent.
/// Row ids are "log:" and the call's id. An expert the log names that
/// `data` lacks becomes a new column, absent from the earlier rows, with
/// no price (`torouter train` fits one from the logged costs). `data` may
/// be empty: its experts are then the log's. Soft-label training
/// (`Loss::Soft`) learns nothing from a row with one label.
void add_logged_rows(RoutingDataset& data, const DecisionLogReading& reading);

TOROUTER_END_NAMESPACE
