// torouter/torouter.hpp: the whole public API in one include.
//
// torouter sends each LLM query to the expert model with the best trade-off
// of predicted quality, cost and latency, and calls it reliably through the
// caller's transport. Start with router.hpp; docs/ARCHITECTURE.md maps the rest.
#pragma once

#include "torouter/calibration.hpp"
#include "torouter/cancel.hpp"
#include "torouter/collect.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/cpu_level.hpp"
#include "torouter/dataset.hpp"
#include "torouter/decision_log.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"
#include "torouter/event_loop.hpp"
#include "torouter/expert.hpp"
#include "torouter/features.hpp"
#include "torouter/log_training.hpp"
#include "torouter/model_io.hpp"
#include "torouter/model_selection.hpp"
#include "torouter/off_policy.hpp"
#include "torouter/policy.hpp"
#include "torouter/router.hpp"
#include "torouter/scorer.hpp"
#include "torouter/state_store.hpp"
#include "torouter/train.hpp"
#include "torouter/trainable_scorer.hpp"
#include "torouter/transport.hpp"
#include "torouter/version.hpp"
