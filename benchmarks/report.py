"""Fixed-precision terminal lines for each part of the benchmark."""


def _header(title: str) -> None:
    print(f"\n== {title}")


def environment(env: dict, quick: bool) -> None:
    _header("machine")
    print(f"date      {env['date']}")
    print(f"command   {env['command']}{'  (quick: figures not for the record)' if quick else ''}")
    print(f"cpu       {env['cpu_model']}, {env['logical_cpus']} logical CPUs, {env['cores_per_socket']} cores per "
          f"socket, {env['threads_per_core']} thread(s) per core, L3 {env['l3_cache']}, {env['memory_gib']} GiB")
    print(f"software  python {env['python']}, torch {env['torch']} (MKL {env['mkl']}, {env['cpu_capability']}), "
          f"{env['torch_threads']} torch threads")
    print(f"load      other processes used {env['other_processes_cores_at_start']:.2f} cores at start")


def training(row: dict) -> None:
    _header(f"training, depth {row['depth']}, latent {row['latent_dim']}, batch {row['batch_size']}, "
            f"{row['threads']} threads, {row['timed_steps']} steps after {row['warmup_steps']}, "
            f"median of {row['repeats']}")
    print(f"engine     {row['engine_images_per_s']:9.0f} images/s  {row['engine_step_ms']:7.2f} ms/step  "
          f"{row['engine_gflops']:6.1f} GFLOP/s")
    print(f"reference  {row['reference_images_per_s']:9.0f} images/s  {row['reference_step_ms']:7.2f} ms/step  "
          f"{row['reference_gflops']:6.1f} GFLOP/s")
    print(f"speedup    {row['speedup']:.2f}x")
    print(f"GEMM       {row['gemm']['gflops']:6.1f} GFLOP/s at the step's shapes (FLOP-weighted); engine reaches "
          f"{row['fraction_of_gemm']:.1%} of it")
    print(f"GEMM time  {row['gemm_ms_per_step_executed']:.2f} ms of the GEMMs autograd runs per step = "
          f"{row['gemm_share_of_step']:.1%} of the step")
    single = row.get("one_thread")
    if single:
        print(f"1 thread   engine {single['engine_images_per_s']:.0f} images/s, {single['engine_gflops']:.1f} GFLOP/s "
              f"= {single['fraction_of_gemm']:.1%} of the 1-thread GEMM rate ({single['gemm_gflops']:.1f} GFLOP/s)")


def inference(row: dict) -> None:
    _header(f"inference, {row['stem']} ({row['weights']})")
    print(f"reconstruct 16 images          {row['reconstruct_16_ms']:8.3f} ms")
    print(f"evaluate {row['test_images']} test images    {row['evaluate_test_set_ms']:8.1f} ms")
    print(f"  with noise variance {row['noise_var']:g}      {row['evaluate_test_set_noisy_ms']:8.1f} ms")


def sweep(result: dict) -> None:
    _header(f"sweep: {result['models']} models x {result['epochs']} epochs "
            f"(one epoch per architecture measured on {result['train_images_per_epoch']} images)")
    print(f"denoisers of: {', '.join(result['denoiser_bases'].values())} ({result['denoiser_bases_source']})")
    for layout, estimate in zip(result["layouts"], result["extrapolated"]):
        epochs = [model["epoch_seconds"] for model in layout["models"]]
        print(f"{layout['workers']} process(es) x {layout['threads']} thread(s): one epoch of "
              f"{len(epochs)} architectures in {layout['wall_seconds']:.1f} s wall "
              f"(epoch {min(epochs):.2f} to {max(epochs):.2f} s, pool start {layout['startup_seconds']:.1f} s, "
              f"data load {layout['load_seconds']:.1f} s)")
        print(f"    extrapolated sweep: {estimate['total_seconds']:.0f} s = {estimate['total_seconds'] / 60:.1f} min "
              f"(phase 1 {estimate['phase1_seconds']:.0f} s, phase 2 {estimate['phase2_seconds']:.0f} s)")
    fastest = result["fastest_layout"]
    default = result["default_layout"]
    verdict = "the default" if fastest == default else "NOT the default"
    print(f"faster layout: {fastest['workers']} x {fastest['threads']}, {verdict} "
          f"({default['workers']} x {default['threads']})")
    bound = result["lower_bound"]
    print(f"lower bound: {bound['total_flops'] / 1e12:.2f} TFLOP at the best GEMM rate = {bound['seconds']:.0f} s")
    actual = result["actual"]
    if "summary_seconds" in actual:
        print(f"actual sweep: summary.json says {actual['summary_seconds']:.0f} s, with "
              f"{actual.get('summary_trained', '?')} of {actual.get('summary_models', '?')} models trained in that run")
    else:
        print("actual sweep: no summary.json found")
    if "checkpoint_span_seconds" in actual:
        print(f"    training span from the checkpoints' creation times and training seconds: "
              f"{actual['checkpoint_span_seconds']:.0f} s, from {actual['checkpoint_span_start']}")
    ratio = actual.get("model_seconds_over_extrapolated")
    if ratio:
        print(f"    checkpoint training seconds over the extrapolated ones (default layout): median "
              f"{ratio['median']:.2f}, {ratio['min']:.2f} to {ratio['max']:.2f} over {ratio['models']} models")


def page(result: dict) -> None:
    _header("page")
    server_rerun = result.get("server_rerun")
    if server_rerun:
        print(f"rerun after a noise-slider change: median {server_rerun['median_s'] * 1e3:.1f} ms over "
              f"{server_rerun['count']} reruns (min {server_rerun['min_s'] * 1e3:.1f}, max "
              f"{server_rerun['max_s'] * 1e3:.1f}), real server, slider value sent to script finished")
    rerun = result.get("rerun")
    if rerun:
        print(f"rerun after a noise-slider change: median {rerun['median_s'] * 1e3:.1f} ms over {rerun['count']} "
              f"reruns (min {rerun['min_s'] * 1e3:.1f}, max {rerun['max_s'] * 1e3:.1f}), AppTest in-process")
    start = result.get("cold_start")
    if start:
        print(f"process start to first reconstructions: median {start['median_s']:.2f} s of {len(start['seconds'])} "
              f"starts ({start['method']})")
        print(f"server RSS after the first render: {start['rss_mib']:.0f} MiB")
    memory = result.get("memory")
    if memory:
        print(f"RSS after loading both datasets and {memory['models_loaded']} models: {memory['rss_mib']:.0f} MiB "
              f"({memory['method']})")
    for note in result.get("notes", []):
        print(f"note: {note}")


def targets(checks: dict) -> None:
    _header("targets")
    for name, check in checks.items():
        state = "met" if check["met"] else "MISSED"
        print(f"{name:<50} {check['value']:10.3f}  target {check['target']:g}  {state}")


def footer(results: dict) -> None:
    loads = ", ".join(f"{part} {cores:.2f}" if cores is not None else f"{part} not sampled"
                      for part, cores in results["load"].items())
    print(f"\nmean CPU use of other processes, in cores: {loads or 'not sampled'}")
    parts = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in results["part_seconds"].items())
    print(f"run took {results['seconds']:.0f} s ({parts})")
