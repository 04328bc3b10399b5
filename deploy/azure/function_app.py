"""The Azure Functions app (Python v2 model) that schedules the day: it starts the GCP job and
checks, at a deadline, that the run finished. The work is in dailyrec_trigger.py.

Schedules are app settings (NCRONTAB, six fields, UTC):
  DAILYREC_START_SCHEDULE     when to start the job, e.g. "0 15 2 * * *" (02:15 UTC, as the crontab)
  DAILYREC_DEADLINE_SCHEDULE  when the run must be over, e.g. "0 15 4 * * *"
"""

import logging

import azure.functions as func

import dailyrec_trigger

app = func.FunctionApp()


@app.timer_trigger(schedule="%DAILYREC_START_SCHEDULE%", arg_name="timer",
                   run_on_startup=False, use_monitor=True)
def start_daily_job(timer: func.TimerRequest) -> None:
    if timer.past_due:
        # The host was down at the scheduled minute: start now; the runner catches up days.
        logging.warning("the start timer is past due; starting the daily job now")
    dailyrec_trigger.start_daily_job()


@app.timer_trigger(schedule="%DAILYREC_DEADLINE_SCHEDULE%", arg_name="timer",
                   run_on_startup=False, use_monitor=True)
def check_daily_job(timer: func.TimerRequest) -> None:
    dailyrec_trigger.check_daily_job()
