"""What auditors read: the funnel, data cards, takedowns, `explain`, review sheets and their images
and plots.
"""
