// The torouter program: train a router from a routing dataset, and route a
// prompt with a trained model.
//
//   torouter train --data DIR --out MODEL [--scorer SPEC | --candidates SPEC;SPEC...]
//                  [--folds N] [--stacks 0|1] [--calibration linear|isotonic]
//                  [--out-of-fold FILE.csv]
//                  [--seed N] [--threads N]
//                  [--loss bce|soft] [--temperature T] [--epochs N]
//   torouter train --log DECISIONS.jsonl [--data DIR] --out MODEL [options as above]
//   torouter route --model MODEL [--experts FILE] [--lambda-cost X | --quality-floor Q] PROMPT
//   torouter eval --data DIR --model MODEL [--json FILE] [--plot FILE.svg]
//                 [--predictions FILE.csv]
//   torouter eval --log DECISIONS.jsonl --model MODEL [--json FILE]
//   torouter calibrate --data DIR --model MODEL (--max-cost-per-query USD | --max-share EXPERT=F)
//   torouter collect --prompts FILE.jsonl --experts FILE --out DIR --transport command:PROGRAM
#include <cstdio>
#include <exception>
#include <string>

#include "args.hpp"

namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  torouter train --data DIR --out MODEL [--scorer gbt|linear|task|mlp|knn|tlite|SPEC]\n"
    "                 [--candidates SPEC[/soft];SPEC...] [--folds N] [--stacks 0|1]\n"
    "                 [--calibration linear|isotonic] [--out-of-fold FILE.csv]\n"
    "                 [--seed N] [--threads N] [--loss bce|soft] [--temperature T] [--epochs N]\n"
    "                 (no --scorer: the candidate of best cross-validated AIQ on the\n"
    "                 training split, gbt, MLP and stacks by default; --folds 0 with\n"
    "                 --scorer skips calibration)\n"
    "  torouter train --log DECISIONS.jsonl [--data DIR] --out MODEL [options as above]\n"
    "                 (adds the logged calls with feedback, each labelling the expert\n"
    "                 it called; --scorer is required without --data or when the log\n"
    "                 names experts the dataset lacks; soft labels are refused)\n"
    "  torouter route --model MODEL [--experts FILE] [--lambda-cost X | --quality-floor Q] PROMPT\n"
    "  torouter eval --data DIR --model MODEL [--json FILE] [--plot FILE.svg]\n"
    "                [--predictions FILE.csv]\n"
    "  torouter eval --log DECISIONS.jsonl --model MODEL [--json FILE]\n"
    "                (off-policy: MODEL's quality and cost on logged calls with feedback)\n"
    "  torouter calibrate --data DIR --model MODEL (--max-cost-per-query USD | --max-share "
    "EXPERT=F)\n"
    "                     [--split train|test]\n"
    "  torouter collect --prompts FILE.jsonl --experts FILE --out DIR --transport command:PROGRAM\n"
    "                   [--metric exact|f1|rougeL] [--threads N] [--test-fraction F] [--seed N]\n"
    "                   [--output-file NAME] [--attempts N] [--timeout-ms N] [--max-concurrent N]\n"
    "                   (PROGRAM gets the expert's name as argument, the prompt on stdin, and\n"
    "                   prints the answer; a non-zero exit is a server error)\n";

}  // namespace

int main(int argc, char** argv) {
  using torouter::cli::Arguments;
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  try {
    const Arguments args = Arguments::parse(argc, argv, 2);
    if (command == "train") return torouter::cli::train(args);
    if (command == "route") return torouter::cli::route(args);
    if (command == "eval") return torouter::cli::evaluate(args);
    if (command == "calibrate") return torouter::cli::calibrate(args);
    if (command == "collect") return torouter::cli::collect(args);
    if (command == "--help" || command == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "torouter: unknown command \"%s\"\n%s", command.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torouter %s: %s\n", command.c_str(), e.what());
    return 1;
  }
}
